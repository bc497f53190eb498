// swift-tools-version:6.0
// The fuzz targets that a single `swiftc` line does not build well
// (`make fuzz`; docs/FUZZING.md). The config loader parses through Yams,
// whose C half (libyaml) needs SwiftPM; the state-file loader needs most of
// StickyCore, and here shares that build with the config loader. The
// Makefile builds this package with `--sanitize=fuzzer --sanitize=address`
// into .build/fuzz-spm, apart from the main build. It depends on the
// repository's own package by path: only StickyCore and Yams are built.
import PackageDescription

/// A harness in `folder` beside its corpus. libFuzzer brings `main`; the
/// harness only exports LLVMFuzzerTestOneInput, so the module must not
/// get one of its own (-parse-as-library).
func fuzzTarget(_ name: String, folder: String, exclude: [String] = []) -> Target {
    .executableTarget(
        name: name,
        dependencies: [.product(name: "StickyCore", package: "stickyd")],
        path: folder,
        exclude: ["corpus", "crashes"] + exclude,
        swiftSettings: [.unsafeFlags(["-parse-as-library"])]
    )
}

let package = Package(
    name: "StickyFuzz",
    dependencies: [.package(name: "stickyd", path: "..")],
    targets: [
        fuzzTarget("FuzzConfigLoader", folder: "ConfigLoader", exclude: ["seeds.py"]),
        fuzzTarget("FuzzStateFile", folder: "StateFile"),
    ]
)
