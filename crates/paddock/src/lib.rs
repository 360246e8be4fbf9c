//! Paddock: a Linux distribution in which every system service is a container.
//!
//! This library is everything the shipped `ros` binary does; `main.rs` is a thin shell over
//! [`cli::main`]. See ARCHITECTURE.md for the map.

pub mod cli;
pub mod config;
pub mod engine;
pub mod fsutil;
pub mod image;
pub mod init;
pub mod netconf;
pub mod root;
pub mod service;
pub mod tls;
pub mod userdocker;
