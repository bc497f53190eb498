import ArgumentParser
import Foundation
import Glibc
import StickyCore

/// The operator's command-line tool. Admin subcommands join `subcommands`.
@main
struct StickyCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stickyctl",
        abstract: "Control and benchmark stickyd.",
        version: StickyVersion.string,
        subcommands: [Show.self, Add.self, SetWeight.self, Drain.self, Ready.self, Maint.self, Remove.self,
                      ClearAffinity.self, Replace.self, Upgrade.self, Raw.self, Bench.self]
    )

    /// As ArgumentParser's own `main()`, except that a usage error exits 2
    /// (the convention of most Unix tools and of scripts that call this one)
    /// rather than EX_USAGE (64), and that `bench` is handed to stickybench
    /// whole, its flags and `--help` included.
    static func main() {
        let arguments = CommandLine.arguments
        if arguments.count > 1 && arguments[1] == "bench" { Bench.exec(Array(arguments.dropFirst(2))) }
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            let code = exitCode(for: error)
            if code == .validationFailure {
                var err = StandardErrorStream()
                print(fullMessage(for: error), to: &err)
                Glibc.exit(2)
            }
            exit(withError: error)
        }
    }
}

/// `stickyctl bench ...`: the affinity benchmark, now the executable
/// `stickybench` (it drives io_uring rings, which the admin CLI has no use
/// for). Listed here so that `stickyctl --help` still names it; `main`
/// execs before parsing, so this command's own `run` is never reached.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure sticky connection rate through a balancer: runs stickybench (see stickybench --help).")

    @Argument(parsing: .allUnrecognized, help: "stickybench's arguments.")
    var arguments: [String] = []

    func run() throws { Bench.exec(arguments) }

    /// Replaces this process with stickybench: the one next to stickyctl
    /// (argv[0]'s directory, so a build tree uses its own), else the first
    /// on PATH.
    static func exec(_ arguments: [String]) -> Never {
        guard let path = executable() else {
            var err = StandardErrorStream()
            print("stickyctl: bench runs stickybench, which is neither next to stickyctl nor on PATH", to: &err)
            Glibc.exit(1)
        }
        var argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) }
        argv.append(nil)
        execv(path, argv)
        let e = errno
        var err = StandardErrorStream()
        print("stickyctl: cannot run \(path): \(String(cString: strerror(e)))", to: &err)
        Glibc.exit(1)
    }

    static func executable() -> String? {
        func runnable(_ p: String) -> Bool {
            var st = stat()
            return stat(p, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG && access(p, X_OK) == 0
        }
        let argv0 = CommandLine.arguments.first ?? ""
        if argv0.contains("/") {
            let beside = (argv0 as NSString).deletingLastPathComponent + "/stickybench"
            if runnable(beside) { return beside }
        }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        return path.split(separator: ":").map { "\($0)/stickybench" }.first(where: runnable)
    }
}

/// stderr as a `TextOutputStream`, one write(2) per string.
struct StandardErrorStream: TextOutputStream {
    mutating func write(_ string: String) {
        var s = string
        s.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
    }
}
