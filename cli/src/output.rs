//! How commands print: an aligned table (default) or JSON (`-o json`).

use comfy_table::presets::NOTHING;
use comfy_table::Table;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Prints `rows` as a table with `header`, or `value` as JSON.
pub fn print<T: Serialize>(format: Format, value: &T, header: &[&str], rows: Vec<Vec<String>>) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Table => {
            let mut t = Table::new();
            t.load_preset(NOTHING);
            if header.iter().any(|h| !h.is_empty()) {
                t.set_header(header.iter().map(|h| h.to_uppercase()));
            }
            for r in rows {
                t.add_row(r);
            }
            // comfy-table pads with a leading space per cell; trim line ends.
            for line in t.to_string().lines() {
                println!("{}", line.trim_end());
            }
        }
    }
    Ok(())
}

/// Bytes shown as text (invalid UTF-8 replaced).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
