//! Property tests of enrollment tokens (`blazedb_protocol::enroll`), through the body of the
//! `token` fuzz target.
//!
//! Every property runs 256 cases; set `BLAZEDB_LONG=1` to run 10 000.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use blazedb_protocol::enroll::{EnrollmentToken, TOKEN_PREFIX};
use blazedb_protocol::fuzz;
use blazedb_protocol::secure::{StaticKeys, Suite};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

fn cases() -> u32 {
    if std::env::var("BLAZEDB_LONG").is_ok_and(|v| v == "1") {
        10_000
    } else {
        256
    }
}

/// A real token for a server with a fixed key of `suite`.
fn real_token(suite: Suite) -> String {
    let server = StaticKeys::from_private(suite, &[0x42; 32]).unwrap();
    EnrollmentToken::generate(&server).unwrap().encode()
}

fn suite() -> impl Strategy<Value = Suite> {
    select(Suite::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn a_real_token_parses_with_any_surrounding_whitespace(
        suite in suite(),
        before in "[ \t\r\n]{0,4}",
        after in "[ \t\r\n]{0,4}",
    ) {
        let text = real_token(suite);
        let padded = format!("{before}{text}{after}");
        let token = EnrollmentToken::parse(&padded).unwrap();
        prop_assert_eq!(token.encode(), text);
        prop_assert_eq!(token.server_suite(), suite);
        fuzz::token(padded.as_bytes());
    }

    /// Any change to a token's characters either is refused or gives another valid token
    /// (the fuzz target checks which): never a panic, never a second spelling.
    #[test]
    fn an_altered_token_is_refused_or_is_another_token(
        suite in suite(),
        changes in vec(
            (any::<prop::sample::Index>(), prop_oneof![
                proptest::char::range('A', 'Z'),
                proptest::char::range('a', 'z'),
                select(vec!['-', '_', '+', '/', '=', ' ', '\0', 'é']),
            ]),
            1..4,
        ),
        cut in any::<prop::sample::Index>(),
    ) {
        let text = real_token(suite);
        let mut chars: Vec<char> = text.chars().collect();
        for (at, c) in changes {
            let i = at.index(chars.len());
            chars[i] = c;
        }
        let altered: String = chars.into_iter().collect();
        fuzz::token(altered.as_bytes());
        let cut = cut.index(altered.len() + 1);
        if let Some(prefix) = altered.get(..cut) {
            fuzz::token(prefix.as_bytes());
        }
    }

    #[test]
    fn arbitrary_text_never_panics_the_token_parser(
        body in prop_oneof![".{0,200}", "[A-Za-z0-9_-]{100,160}"],
        prefixed in any::<bool>(),
    ) {
        let text = if prefixed { format!("{TOKEN_PREFIX}{body}") } else { body };
        fuzz::token(text.as_bytes());
    }
}
