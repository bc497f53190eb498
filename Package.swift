// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "stickyd",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "stickyd", targets: ["stickyd"]),
        .executable(name: "stickyctl", targets: ["stickyctl"]),
        .library(name: "StickyCore", targets: ["StickyCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // liburing, found through pkg-config; Debian's liburing-dev provides it.
        .systemLibrary(
            name: "CURing",
            pkgConfig: "liburing",
            providers: [.apt(["liburing-dev"])]
        ),
        // C shim: only what Swift cannot import from liburing.h (macros, BPF).
        .target(name: "CURingShim", dependencies: ["CURing"]),
        // OpenSSL (Debian's libssl-dev) for the remote admin listener's
        // mutual TLS, behind a few C functions: many of its calls are macros.
        .target(
            name: "CTLSShim",
            linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto")]
        ),
        // Pure Swift: no sockets, no clocks of its own. Testable with a manual clock.
        .target(
            name: "StickyCore",
            dependencies: [.product(name: "Yams", package: "Yams")]
        ),
        // The io_uring data path: rings, slots, forwarding engines.
        .target(
            name: "StickyIO",
            dependencies: [
                "CURing", "CURingShim", "CTLSShim", "StickyCore",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "stickyd",
            dependencies: [
                "StickyCore", "StickyIO",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The operator's CLI: admin commands and the affinity benchmark.
        .executableTarget(
            name: "stickyctl",
            dependencies: [
                "StickyCore", "StickyIO", "CURing", "CURingShim",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(name: "StickyCoreTests", dependencies: ["StickyCore"]),
        .testTarget(name: "StickyIOTests", dependencies: ["StickyIO", "StickyCore", "CURing", "CURingShim"]),
    ]
)
