//! Integration tests of Tagcast live in `tests/`; this library only compiles the README's Rust
//! examples as doc-tests, so the documentation keeps working when pasted.

#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
