// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "stickyd",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "stickyd", targets: ["stickyd"]),
        .executable(name: "stickyctl", targets: ["stickyctl"]),
        .executable(name: "stickybench", targets: ["stickybench"]),
        .library(name: "StickyCore", targets: ["StickyCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        // Control plane only (health probes, the metrics endpoint, the admin
        // service); the io_uring data path never touches NIO.
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        // The remote admin listener's mutual TLS, and stickyctl --remote.
        // It bundles BoringSSL: no system OpenSSL is linked.
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-nio-http2", from: "1.46.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
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
        // Pure Swift: no sockets, no clocks of its own. Testable with a manual clock.
        .target(
            name: "StickyCore",
            dependencies: [.product(name: "Yams", package: "Yams")]
        ),
        // The data plane: the io_uring rings, connection slots, forwarding
        // engines and the worker loop. It owns the ring and never imports
        // NIO or TLS: the control plane talks to it through WorkerCommand
        // mailboxes and WorkerReport snapshots only.
        .target(
            name: "StickyDataPlane",
            dependencies: [
                "CURing", "CURingShim", "StickyCore",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The control plane: registry publishing, reload, drains, the admin
        // service, health probes, metrics, takeover and upgrade. Its NIO
        // threads never touch a ring.
        .target(
            name: "StickyControlPlane",
            dependencies: [
                "CURingShim", "StickyCore", "StickyDataPlane",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(
            name: "stickyd",
            dependencies: [
                "StickyCore", "StickyControlPlane", "StickyDataPlane",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The operator's CLI: the admin commands, over the Unix socket or
        // (--remote) mutual TLS. It links neither the ring nor the daemon:
        // `stickyctl bench` runs the stickybench executable.
        .executableTarget(
            name: "stickyctl",
            dependencies: [
                "StickyCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
            ]
        ),
        // The affinity benchmark: its client and identity backends drive
        // their own io_uring rings.
        .executableTarget(
            name: "stickybench",
            dependencies: [
                "StickyCore", "StickyDataPlane", "CURing", "CURingShim",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(name: "StickyCoreTests", dependencies: ["StickyCore"]),
        .testTarget(name: "StickyDataPlaneTests", dependencies: ["StickyDataPlane", "StickyCore", "CURing", "CURingShim"]),
        .testTarget(
            name: "StickyControlPlaneTests",
            dependencies: [
                "StickyControlPlane", "StickyDataPlane", "StickyCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]
        ),
    ]
)
