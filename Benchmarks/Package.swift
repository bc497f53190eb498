// swift-tools-version:6.1
// Micro-benchmarks of stickyd's core, as a package of its own so that the
// benchmark framework and its dependencies stay out of the product.
//
//   cd Benchmarks && swift package --scratch-path .build benchmark
//
// ordo-one/benchmark is named with only the MallocInterposer trait: its
// default traits add a runtime interposer for Swift 6.3 on Linux that this
// machine's package mirror does not carry.
import PackageDescription

let package = Package(
    name: "stickyd-benchmarks",
    platforms: [.macOS(.v13)],
    dependencies: [
        // Named, so that the product reference does not depend on the name
        // of the folder the repository was cloned into.
        .package(name: "stickyd", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "AffinityBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "StickyCore", package: "stickyd"),
            ],
            path: "Benchmarks/AffinityBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
