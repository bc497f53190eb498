import XCTest
@testable import StickyCore

/// The error a config text fails to load with, or a test failure (and nil)
/// when it loads or fails with something else: the config tests' one way
/// into `ConfigLoader` for a file that must be refused.
func configError(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> ConfigError? {
    do {
        _ = try ConfigLoader.parse(text, file: "test.yaml")
        XCTFail("expected a config error", file: file, line: line)
    } catch let error as ConfigError {
        return error
    } catch {
        XCTFail("expected a ConfigError, got \(error)", file: file, line: line)
    }
    return nil
}
