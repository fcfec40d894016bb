//! `garrison-codegen typescript SCHEMA.json OUT.ts`: writes a game's TypeScript codecs from its
//! wire schema (`garrison-battle schema` prints the battle's).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [language, schema, out] = args.as_slice() else {
        eprintln!("usage: garrison-codegen typescript SCHEMA.json OUT.ts");
        return ExitCode::from(2);
    };
    if language != "typescript" {
        eprintln!("garrison-codegen: unknown language {language:?} (known: typescript)");
        return ExitCode::from(2);
    }
    let result = std::fs::read_to_string(schema)
        .map_err(|error| format!("cannot read {schema}: {error}"))
        .and_then(|text| garrison_codegen::typescript(&text).map_err(|error| error.to_string()))
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
