//! Tagcast integration tests: one binary, a module per area (ripgrep's layout). Every test runs
//! a real server on 127.0.0.1 with an OS-picked port and talks to it over real sockets.

mod it {
    pub mod util;

    mod api;

    mod auth;
    mod cli;
    mod cluster;
    mod envelope;
    mod history;
    mod hostile;
    mod http_api;
    mod lifecycle;
    mod limits;
    mod native_sdk;
    mod operations;
    mod payload;
    mod retag;
    mod routing;
    mod signed_tags;
    mod static_files;
    mod tls;
    mod validation;
}
