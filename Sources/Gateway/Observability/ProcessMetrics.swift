import Foundation

/// The standard `process_*` series (as the Prometheus client libraries name them), read from
/// `/proc/self` at scrape time; absent on systems without procfs.
enum ProcessMetrics {
    static func render() -> String {
        guard let stat = try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")")
        else { return "" }
        // Fields after the parenthesised command name, which may itself hold spaces.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        func field(_ number: Int) -> Double {
            // `number` is the 1-based field index of proc(5); fields[0] is field 3 (state).
            let index = number - 3
            return index < fields.count ? Double(fields[index]) ?? 0 : 0
        }
        let cpuSeconds = (field(14) + field(15)) / ticks
        let virtualBytes = field(23)
        let residentBytes = field(24) * Double(sysconf(Int32(_SC_PAGESIZE)))
        var out = ""
        func gauge(_ name: String, _ help: String, _ value: Double, type: String = "gauge") {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(GatewayMetrics.number(value))\n"
        }
        gauge("process_cpu_seconds_total", "User and system CPU time spent in seconds.", cpuSeconds, type: "counter")
        gauge("process_resident_memory_bytes", "Resident memory size in bytes.", residentBytes)
        gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", virtualBytes)
        if let fds = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") {
            gauge("process_open_fds", "Number of open file descriptors.", Double(fds.count))
        }
        var limit = rlimit()
        if getrlimit(RLIMIT_NOFILE_VALUE, &limit) == 0 {
            gauge("process_max_fds", "Maximum number of open file descriptors.", Double(limit.rlim_cur))
        }
        if let boot = bootTime() {
            gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", boot + field(22) / ticks)
        }
        return out
    }

    private static let RLIMIT_NOFILE_VALUE = {
        #if os(Linux)
        return __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        #else
        return RLIMIT_NOFILE
        #endif
    }()

    /// `btime` of /proc/stat: the boot time the start tick count is relative to.
    private static func bootTime() -> Double? {
        guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("btime ") {
            return Double(line.dropFirst(6).trimmingCharacters(in: .whitespaces))
        }
        return nil
    }
}
