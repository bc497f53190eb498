public enum StickyVersion {
    /// The one place the version is written: `--version`, `show info`, and
    /// the metrics endpoint's `stickyd_build_info` read it.
    public static let string = "0.2.0"
}
