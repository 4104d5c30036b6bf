//! Marks the tests that need a service as ignored when it is not there, so
//! that a run without them shows them as ignored instead of passed: the
//! PostgreSQL tests need `POSTGRES_TEST_URL`, the Redis tests
//! `REDIS_TEST_URL`, the browser tests Chromium and chromedriver (found at
//! `CHROMIUM` and `CHROMEDRIVER`, or in /usr/bin). `.ci/run` provides all
//! three.

fn main() {
    for cfg in ["have_postgres", "have_redis", "have_browser"] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    for var in ["POSTGRES_TEST_URL", "REDIS_TEST_URL", "CHROMIUM", "CHROMEDRIVER"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    println!("cargo::rerun-if-changed=build.rs");
    let set = |var: &str| std::env::var_os(var).is_some_and(|v| !v.is_empty());
    if set("POSTGRES_TEST_URL") {
        println!("cargo::rustc-cfg=have_postgres");
    }
    if set("REDIS_TEST_URL") {
        println!("cargo::rustc-cfg=have_redis");
    }
    let found = |var: &str, defaults: &[&str]| match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(path) => std::path::Path::new(&path).exists(),
        None => defaults.iter().any(|path| std::path::Path::new(path).exists()),
    };
    let chromium = found("CHROMIUM", &["/usr/bin/chromium", "/usr/bin/chromium-browser"]);
    if chromium && found("CHROMEDRIVER", &["/usr/bin/chromedriver"]) {
        println!("cargo::rustc-cfg=have_browser");
    }
}
