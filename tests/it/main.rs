//! The integration suite: the real server on 127.0.0.1:0 against a fake
//! Confluence that records what it receives.

mod admin;
mod auth;
mod browser;
mod cli;
mod common;
mod forwarding;
mod hardening;
mod hostile;
mod pat;
mod postgres;
mod protocols;
mod recording;
mod replicas;
mod rules;
mod self_service;
mod store_contract;
mod tokens;
mod ui;
