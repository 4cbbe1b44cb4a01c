//! Spec parser: never panics; whatever parses prints in a canonical form
//! that parses back to the same spec, and serializes to JSON.
#![no_main]

use iscsimple::spec::Spec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Spec::parse(text) {
        Ok(spec) => {
            let canonical = spec.to_string();
            let again = Spec::parse(&canonical).unwrap_or_else(|e| {
                panic!("canonical form {canonical:?} of {text:?} rejected: {e}")
            });
            assert_eq!(again, spec, "{text:?} -> {canonical:?}");
            assert_eq!(again.to_string(), canonical);
            let json = serde_json::to_string(&spec).expect("JSON");
            assert!(json.starts_with("{\"target\":"), "{json}");
        }
        Err(e) => {
            // Errors are one line and point inside (or just past) the input.
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "{msg}");
            assert!(e.position() <= text.len(), "{msg}");
        }
    }
});
