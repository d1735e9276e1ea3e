//! `list` and `generate-schema`: the component types and the configuration schema.

use super::*;

pub(super) fn list() -> i32 {
    let (sources, sinks) = config::schema::component_names();
    println!("Sources:");
    for name in sources {
        println!("  {name}");
    }
    println!("Sinks:");
    for name in sinks {
        println!("  {name}");
    }
    0
}

pub(super) fn generate_schema(format: SchemaFormat) -> i32 {
    match format {
        SchemaFormat::Json => {
            let schema = config::schema::schema();
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).expect("a JSON value serializes")
            );
        }
        SchemaFormat::Markdown => print!("{}", config::schema::reference()),
    }
    0
}
