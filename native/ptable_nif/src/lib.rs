//! Rustler glue for `PropertyTable.Persist.Native` (placeholder while the core is written).

#[rustler::nif]
fn nif_loaded() -> bool {
    true
}

rustler::init!("Elixir.PropertyTable.Persist.Native");
