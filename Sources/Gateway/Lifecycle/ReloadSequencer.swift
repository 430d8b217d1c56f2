import Synchronization

/// Puts config reloads in one line, whoever asks (SIGHUP, the file watcher, `POST /config/reload`).
/// A reload has two halves: `prepare` (read and validate the file, build what the config needs),
/// synchronous, run by the caller under a lock so no two overlap; and `apply` (swap it in, bind
/// new listeners), asynchronous, run by one worker task in the order the prepares happened. The
/// config that ends up running is therefore the one read last, and every reload that validated is
/// applied (and counted) exactly once.
final class ReloadSequencer: Sendable {
    private typealias Job = @Sendable () async -> Void
    private let jobs: AsyncStream<Job>.Continuation
    private let preparing = Mutex(())

    init() {
        let (stream, jobs) = AsyncStream.makeStream(of: Job.self)
        self.jobs = jobs
        // The one task that applies reloads; it ends when `finish` ends the stream.
        Task {
            for await job in stream { await job() }
        }
    }

    /// Runs `prepare` now (after any prepare already running); when it succeeds, queues `apply`
    /// behind every apply queued before it. Returns what `prepare` returned.
    func submit<Prepared: Sendable, Failure: Error>(
        prepare: () -> Result<Prepared, Failure>, apply: @escaping @Sendable (Prepared) async -> Void
    ) -> Result<Prepared, Failure> {
        self.preparing.withLock { _ in
            let result = prepare()
            if case .success(let prepared) = result {
                // Queued under the lock, so applies run in the order of their prepares.
                self.jobs.yield { await apply(prepared) }
            }
            return result
        }
    }

    /// Returns once every apply queued so far has finished.
    func settled() async {
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            let queued = self.preparing.withLock { _ in self.jobs.yield { done.resume() } }
            if case .terminated = queued { done.resume() }
        }
    }

    /// Applies queued so far still run; later submits are prepared but never applied.
    func finish() { self.jobs.finish() }
}
