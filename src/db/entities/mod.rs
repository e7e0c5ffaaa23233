//! SeaORM entities, one module per table.

pub mod user;
