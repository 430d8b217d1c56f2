/// The Redis side of the rate limiter: one Lua script, run with one EVALSHA per request
/// (STYLE habit 12), implementing exactly the maths of `SlidingWindowLimiter`,
/// `SlidingLogLimiter` and `MultiPolicy` — decide every policy, then count all or none.
///
/// Call: `EVALSHA <sha> <n> key1..keyN  now_ms cost  (algo limit window_ms shadow) × N  [peek]`
/// - `now_ms`: empty string in production: the script reads `TIME`, so every gateway instance
///   shares Redis's clock. A number overrides it (tests only: a deterministic clock).
/// - `cost`: units this request consumes (normally 1).
/// - per policy: `algo` `w` (sliding_window) or `l` (sliding_log), `limit`, `window_ms`,
///   `shadow` `1`/`0`, in the order of the keys.
/// - `peek` (optional, the literal word): decide every policy as usual but write nothing — the
///   first round of a request whose policies span several Redis Cluster slots, which counts on
///   any slot only once every slot has allowed (`RedisRateLimitStore`).
///
/// Storage: a sliding window key is a hash `{w = window start ms, c = current count,
/// p = previous count}`. The first write of a window sets all three and expires the key two
/// windows after that window's start (from then on both counts are irrelevant); later writes in
/// the window only `HINCRBY` the count. That keeps the steady call at three commands (`TIME`,
/// `HMGET`, `HINCRBY`) and the fast path of one sliding-window policy free of per-policy tables:
/// together 15–18% less of Redis's CPU per call than writing all fields and the expiry every time
/// (`benchmarks/results/2026-12-01-session14.md`).
/// A sliding log key is a sorted set of admitted request times (score = ms; member made unique
/// with a suffix), pruned and PEXPIRE'd to one window on every write. A denied request writes
/// nothing. Keys always carry a TTL.
///
/// Reply: one array per policy, `{allowed 1/0, remaining, reset_ms, retry_ms}` (retry 0 when it
/// allows) — the fields of `Decision`; `decision(reply:requests:)` rebuilds the `MultiDecision`.
/// A peek replies with the fields a call gets when some enforced policy denies: every policy
/// decided on the uncounted state (`PolicyLimiter.peek`).
///
/// Notes for the session wiring this to hiredis:
/// - Load it with `SCRIPT LOAD` (the reply is the SHA1; there is no SHA1 in this module) and
///   fall back to EVAL / reload on `NOSCRIPT`.
/// - Redis Cluster: every key of one call must hash to the same slot. Keys built by
///   `RateLimitKey` share the client's hash tag, so policies keyed by the same client identity
///   can go in one call; policies keyed by different identities (client_ip vs jwt_subject) land
///   in different slots and would get CROSSSLOT: one call per slot, after a peek of every slot.
/// - Arithmetic is in Lua doubles: exact because every product stays below 2^53 for limits up
///   to 10^6 and windows up to ~100 days (limit × window_ms < 2^53).
/// - `TIME` in a script that writes needs effects replication: the default since Redis 5 and the
///   only mode since 7; `redis.replicate_commands()` is called when present for older servers.
public enum RedisRateLimitScript {
    public static let source: String = #"""
    -- BarberPro Gateway rate limiter (RateLimiter/RedisRateLimitScript.swift documents the contract).
    local now
    if ARGV[1] ~= nil and ARGV[1] ~= '' then
      now = tonumber(ARGV[1])
    else
      if redis.replicate_commands then redis.replicate_commands() end
      local t = redis.call('TIME')
      now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    end
    local cost = tonumber(ARGV[2])
    local n = #KEYS
    local peek = ARGV[3 + 4 * n] == 'peek'

    -- sliding_window: usage = p * (W - e) / W + c, compared multiplied through by W; `c` and `p` are
    -- the current and previous windows' counts, `e` the time elapsed in the current window (`s`).
    local function sw_view(key, W)
      local v = redis.call('HMGET', key, 'w', 'c', 'p')
      local ws = tonumber(v[1])
      local t = now
      if ws ~= nil and t < ws then t = ws end
      local start = t - (t % W)
      local c, p = 0, 0
      if ws == start then
        c = tonumber(v[2]) or 0
        p = tonumber(v[3]) or 0
      elseif ws == start - W then
        p = tonumber(v[2]) or 0
      end
      return { stored = ws, start = start, e = t - start, c = c, p = p }
    end
    local function sw_fits(s, limit, W, k)
      return s.p * (W - s.e) + (s.c + k) * W <= limit * W
    end
    local function sw_wait(s, limit, W, k)
      if k > limit then return W end
      if sw_fits(s, limit, W, k) then return 0 end
      if s.c + k <= limit and s.p > 0 then
        return W - math.floor((limit - s.c - k) * W / s.p) - s.e
      end
      return (W - s.e) + W - math.floor((limit - k) * W / s.c)
    end
    -- Counts `cost` more. Within a window only the count moves (one HINCRBY); the first write of a
    -- window stores all three fields and expires the key two windows after the window's start,
    -- when both counts stop mattering.
    local function sw_count(key, s, W)
      s.c = s.c + cost
      if s.stored == s.start then
        redis.call('HINCRBY', key, 'c', ARGV[2])
      else
        redis.call('HSET', key, 'w', s.start, 'c', s.c, 'p', s.p)
        redis.call('PEXPIRE', key, s.start + 2 * W - now)
      end
    end
    -- {allowed, remaining, reset_ms, retry_ms} on the state after the write.
    local function sw_reply(s, ok, limit, W)
      local rem = 0
      local free = limit * W - s.p * (W - s.e) - s.c * W
      if free > 0 then rem = math.floor(free / W) end
      local reset, retry = 0, 0
      if rem < limit then reset = sw_wait(s, limit, W, rem + 1) end
      if not ok then retry = sw_wait(s, limit, W, cost) end
      if ok then return { 1, rem, reset, retry } end
      return { 0, rem, reset, retry }
    end

    -- One sliding-window policy, the common configuration: the phases below without their tables.
    if n == 1 and ARGV[3] == 'w' then
      local key, limit, W = KEYS[1], tonumber(ARGV[4]), tonumber(ARGV[5])
      local s = sw_view(key, W)
      local ok = sw_fits(s, limit, W, cost)
      if ok and not peek then sw_count(key, s, W) end
      return { sw_reply(s, ok, limit, W) }
    end

    -- sliding_log: live entries are those with score > now - W.
    local function sl_count(key, W)
      return redis.call('ZCOUNT', key, string.format('(%d', now - W), '+inf')
    end
    local function sl_wait(key, count, limit, W, k)
      if k > limit then return W end
      local excess = count + k - limit
      if excess <= 0 then return 0 end
      local r = redis.call('ZRANGEBYSCORE', key, string.format('(%d', now - W), '+inf',
                           'WITHSCORES', 'LIMIT', excess - 1, 1)
      return tonumber(r[2]) + W - now
    end

    -- Phase 1: decide every policy without writing.
    local pol = {}
    local all_ok = true
    for i = 1, n do
      local b = 2 + (i - 1) * 4
      local p = { key = KEYS[i], algo = ARGV[b + 1], limit = tonumber(ARGV[b + 2]),
                  W = tonumber(ARGV[b + 3]), shadow = ARGV[b + 4] == '1' }
      if p.algo == 'w' then
        p.s = sw_view(p.key, p.W)
        p.ok = sw_fits(p.s, p.limit, p.W, cost)
      else
        p.count = sl_count(p.key, p.W)
        p.ok = p.count + cost <= p.limit
      end
      if not p.ok and not p.shadow then all_ok = false end
      pol[i] = p
    end

    -- Phase 2: count every policy that allows, only if no enforced policy denies (and not a peek).
    if all_ok and not peek then
      for i = 1, n do
        local p = pol[i]
        if p.ok then
          if p.algo == 'w' then
            sw_count(p.key, p.s, p.W)
          else
            redis.call('ZREMRANGEBYSCORE', p.key, '-inf', string.format('%d', now - p.W))
            for j = 1, cost do
              local seq = 0
              while redis.call('ZADD', p.key, 'NX', now, string.format('%d-%d-%d', now, j, seq)) == 0 do
                seq = seq + 1
              end
            end
            p.count = p.count + cost
            redis.call('PEXPIRE', p.key, p.W)
          end
        end
      end
    end

    -- Phase 3: report {allowed, remaining, reset_ms, retry_ms} per policy.
    local out = {}
    for i = 1, n do
      local p = pol[i]
      if p.algo == 'w' then
        out[i] = sw_reply(p.s, p.ok, p.limit, p.W)
      else
        local rem, reset, retry = p.limit - p.count, 0, 0
        if rem < 0 then rem = 0 end
        if rem < p.limit then reset = sl_wait(p.key, p.count, p.limit, p.W, rem + 1) end
        if not p.ok then retry = sl_wait(p.key, p.count, p.limit, p.W, cost) end
        local allowed = 0
        if p.ok then allowed = 1 end
        out[i] = { allowed, rem, reset, retry }
      end
    end
    return out
    """#

    /// KEYS and ARGV for one call. `nowOverrideMs` is for tests only; production passes nil so
    /// the script uses Redis's `TIME`. `peek` asks for the decision without counting.
    /// `EVALSHA sha numkeys keys… arguments…` for `requests`, as one list sized once: what a
    /// check sends (`keysAndArguments` gives the same keys and arguments apart).
    public static func evalshaCommand(
        sha: String, _ requests: [(PolicySpec, String)], cost: Int = 1, nowOverrideMs: Int64? = nil, peek: Bool = false
    ) -> [String] {
        var command: [String] = []
        command.reserveCapacity(6 + requests.count * 5)
        command.append("EVALSHA")
        command.append(sha)
        command.append(String(requests.count))
        for (_, key) in requests { command.append(key) }
        command.append(nowOverrideMs.map { String($0) } ?? "")
        command.append(String(cost))
        for (spec, _) in requests {
            command.append(spec.algorithm == .slidingWindow ? "w" : "l")
            command.append(String(spec.limit))
            command.append(String(spec.windowMs))
            command.append(spec.shadow ? "1" : "0")
        }
        if peek { command.append("peek") }
        return command
    }

    public static func keysAndArguments(
        _ requests: [(PolicySpec, String)], cost: Int = 1, nowOverrideMs: Int64? = nil, peek: Bool = false
    ) -> (keys: [String], arguments: [String]) {
        var args = [nowOverrideMs.map { String($0) } ?? "", String(cost)]
        for (spec, _) in requests {
            args += [spec.algorithm == .slidingWindow ? "w" : "l", String(spec.limit),
                     String(spec.windowMs), spec.shadow ? "1" : "0"]
        }
        if peek { args.append("peek") }
        return (requests.map { $0.1 }, args)
    }

    /// Rebuilds the `MultiDecision` from the script's reply; nil if the reply is malformed.
    /// `peek`: the reply of a peek call, which counted nothing whatever it decided.
    public static func decision(reply: [[Int64]], requests: [(PolicySpec, String)], peek: Bool = false) -> MultiDecision? {
        guard reply.count == requests.count else { return nil }
        return decision(requests: requests, peek: peek) { index in
            let r = reply[index]
            return r.count == 4 ? (r[0], r[1], r[2], r[3]) : nil
        }
    }

    /// The decision from the script's row for each request, `(allowed, remaining, reset_ms,
    /// retry_ms)` (nil: the reply is malformed). One array and no intermediate rows, so a caller
    /// can read the rows straight from the reply.
    public static func decision(
        requests: [(PolicySpec, String)], peek: Bool = false, row: (Int) -> (Int64, Int64, Int64, Int64)?
    ) -> MultiDecision? {
        var decisions: [PolicyDecision] = []
        decisions.reserveCapacity(requests.count)
        var allowed = true
        for index in requests.indices {
            guard let (isAllowed, remaining, resetMs, retryMs) = row(index) else { return nil }
            let (policy, key) = requests[index]
            let decision = Decision(allowed: isAllowed == 1, limit: policy.limit, remaining: Int(remaining),
                                    resetAfterMs: resetMs, retryAfterMs: isAllowed == 1 ? nil : retryMs)
            if !policy.shadow && !decision.allowed { allowed = false }
            decisions.append(PolicyDecision(policy: policy, key: key, decision: decision, counted: false))
        }
        // All-or-nothing: a policy counted only when every enforced one allowed.
        for index in decisions.indices {
            decisions[index].counted = !peek && allowed && decisions[index].decision.allowed
        }
        return MultiDecision(allowed: allowed, decisions: decisions)
    }
}
