//! The install capability over real sockets against the simulators (product.md §2–§5).

mod admin;
mod keyring;
mod oauth;
mod provision;
mod registration;
mod settings;
mod tokens;
mod uninstall;
