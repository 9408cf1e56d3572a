//! Secrets given to the worker (the MongoDB password, Kafka SASL settings) never appear in
//! what it prints, even when it refuses them.

use std::process::Command;

const SECRET: &str = "S3CRET-pw";

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_projection-worker"))
        .args(["--bootstrap-servers", "127.0.0.1:9", "--http-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(args)
        .output()
        .expect("run projection-worker");
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn refused_configuration_is_reported_without_its_secrets() {
    for uri in [
        format!("mongodb://app:{SECRET}@mongo:notaport/"),
        format!("mongo://app:{SECRET}@mongo/"),
        format!("mongodb://app:{SECRET}@mongo/?authSource=admin&unknownOption=1&tls=maybe"),
    ] {
        let (code, output) = run(&["--mongodb-uri", &uri]);
        assert_ne!(code, Some(0), "{uri} refused: {output}");
        assert!(output.contains("MongoDB URI"), "a clear reason: {output}");
        assert!(!output.contains(SECRET), "the password leaked: {output}");
    }
    let property = format!("sasl.password{SECRET}");
    let (code, output) = run(&["--mongodb-uri", "mongodb://127.0.0.1:1/", "--kafka-property", &property]);
    assert_ne!(code, Some(0));
    assert!(output.contains("KEY=VALUE") && !output.contains(SECRET), "{output}");
}
