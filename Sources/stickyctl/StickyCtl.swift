import ArgumentParser
import Glibc
import StickyControlPlane
import StickyCore
import StickyDataPlane

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
    /// rather than EX_USAGE (64).
    static func main() {
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

/// stderr as a `TextOutputStream`, one write(2) per string.
struct StandardErrorStream: TextOutputStream {
    mutating func write(_ string: String) {
        var s = string
        s.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
    }
}
