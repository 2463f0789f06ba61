//! Test-only attacker: replaces the content of a pushed bundle in the
//! operator's object store while the operator's record (and so every signed
//! offer) keeps the original sha256. The OTA tests use it to prove that a
//! device refuses a bundle whose bytes do not match the signed offer.
//!
//!     overwrite-bundle-object NATS_URL NKEY_SEED_FILE BUNDLE_ID FILE

use harmony_protocol::names::BUNDLE_OBJECT_BUCKET;
use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, seed_file, id, file] = args.as_slice() else {
        eprintln!("usage: overwrite-bundle-object NATS_URL NKEY_SEED_FILE BUNDLE_ID FILE");
        return ExitCode::from(2);
    };
    match overwrite(url, seed_file, id, file).await {
        Ok(bytes) => {
            println!("object {id} in {BUNDLE_OBJECT_BUCKET} now holds {bytes} bytes of {file}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("overwrite-bundle-object: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn overwrite(url: &str, seed_file: &str, id: &str, file: &str) -> Result<u64, String> {
    let seed = std::fs::read_to_string(seed_file).map_err(|e| format!("{seed_file}: {e}"))?;
    let client = async_nats::ConnectOptions::with_nkey(seed.trim().to_string())
        .connect(url)
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    let js = async_nats::jetstream::new(client);
    let store = js.get_object_store(BUNDLE_OBJECT_BUCKET).await.map_err(|e| format!("object store: {e}"))?;
    let mut reader = tokio::fs::File::open(file).await.map_err(|e| format!("{file}: {e}"))?;
    let info = store.put(id, &mut reader).await.map_err(|e| format!("put {id}: {e}"))?;
    Ok(info.size as u64)
}
