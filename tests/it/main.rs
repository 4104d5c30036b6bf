//! The integration suite: the real server on 127.0.0.1:0 against a fake
//! Confluence that records what it receives.

mod admin;
mod admin_page;
mod auth;
mod browser;
mod cli;
mod client_shapes;
mod common;
mod confinement;
mod flood;
mod forwarding;
mod hardening;
mod hostile;
mod keep_alive;
mod notify;
mod pat;
mod postgres;
mod protocols;
mod readme;
mod recording;
mod replicas;
mod restrictions;
mod rotation;
mod rules;
mod self_service;
mod served_as;
mod shared_limits;
mod spaces;
mod store_contract;
mod suggest;
mod tokens;
mod tunnels;
mod ui;
mod upstream;
mod usage_days;
