/// The one place the version is written: `--version` (stickyd, stickyctl,
/// stickybench), `show info`, and the metrics endpoint's
/// `stickyd_build_info` read it. In StickyCore, so that the command-line
/// tools can print it without linking the daemon.
public enum StickyVersion {
    public static let string = "0.2.0"
}
