import ArgumentParser
import Glibc
import StickyCore

/// `stickybench`: the affinity benchmark. `run` (the default) measures;
/// `serve` runs the identity backends it measures against. An executable
/// of its own, since its client and backends drive io_uring rings that the
/// admin CLI has no use for; `stickyctl bench ...` runs this program.
@main
struct StickyBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stickybench",
        abstract: "Measure sticky connection rate through a balancer.",
        discussion: """
        Start identity backends with `stickybench serve`, put the balancer in front \
        of them, then run `stickybench --target BALANCER`. Each connection reads the \
        name of the backend it reached; a client IP seen on two names is a stickiness \
        violation. `stickyctl bench` is the same program. See docs/BENCH.md.
        """,
        version: StickyVersion.string,
        subcommands: [BenchRun.self, BenchServe.self],
        defaultSubcommand: BenchRun.self
    )

    /// As ArgumentParser's own `main()`, except that a usage error exits 2,
    /// as stickyctl's do (and as BenchRun's help says).
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            guard exitCode(for: error) == .validationFailure else { exit(withError: error) }
            let message = fullMessage(for: error) + "\n"
            _ = message.withCString { write(2, $0, strlen($0)) }
            Glibc.exit(2)
        }
    }
}
