//! `garrison-codegen typescript|csharp SCHEMA.json OUT`: writes a game's TypeScript or C# codecs
//! from its wire schema (`garrison-battle schema` prints the battle's).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [language, schema, out] = args.as_slice() else {
        eprintln!("usage: garrison-codegen typescript|csharp SCHEMA.json OUT");
        return ExitCode::from(2);
    };
    let generate = match language.as_str() {
        "typescript" => garrison_codegen::typescript,
        "csharp" => garrison_codegen::csharp,
        other => {
            eprintln!("garrison-codegen: unknown language {other:?} (known: typescript, csharp)");
            return ExitCode::from(2);
        }
    };
    let result = std::fs::read_to_string(schema)
        .map_err(|error| format!("cannot read {schema}: {error}"))
        .and_then(|text| generate(&text).map_err(|error| error.to_string()))
        .and_then(|code| {
            std::fs::write(out, code).map_err(|error| format!("cannot write {out}: {error}"))
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("garrison-codegen: {error}");
            ExitCode::FAILURE
        }
    }
}
