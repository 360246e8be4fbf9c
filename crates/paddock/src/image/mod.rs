//! The image half of the system engine: a content-addressed OCI image store, a registry
//! client, layer unpacking and `docker save` / OCI archives.
//!
//! Used online by the engine daemon and `ros image`, and offline by the OS builder to preload
//! images, always through [`Store`].

pub mod archive;
pub mod digest;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod spec;
pub mod store;
pub mod unpack;

pub use digest::Digest;
pub use reference::Reference;
pub use store::{Image, Store, StoreError};
