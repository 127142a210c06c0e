//! How an op-dbus plugin records a footprint from Rust: a zbus proxy of
//! `org.opdbus.Blockchain`, with the daemon's typed errors told apart.
//!
//! ```sh
//! cargo run --example client -- network create '{"interface":"eth0"}'
//! cargo run --example client -- --address unix:path=/run/test/bus network create '{}'
//! ```
//! Writing needs root (or a uid in OPDBUS_WRITER_UIDS and the group `opdbus`); reading is open.

use anyhow::Context;
use zbus::proxy;

/// The daemon's interface, as a plugin sees it (see docs/dbus-api.md).
#[proxy(
    interface = "org.opdbus.Blockchain",
    default_service = "org.opdbus.Blockchain",
    default_path = "/org/opdbus/Blockchain"
)]
trait Blockchain {
    /// Returns once the block is durable on disk.
    fn add_footprint(
        &self,
        plugin: &str,
        operation: &str,
        data_json: &str,
    ) -> zbus::Result<(u64, String)>;

    fn get_block(&self, hash: &str) -> zbus::Result<String>;

    fn get_block_by_height(&self, height: u64) -> zbus::Result<String>;

    fn verify(&self) -> zbus::Result<(bool, u64, String)>;

    #[zbus(property)]
    fn height(&self) -> zbus::Result<u64>;

    #[zbus(property)]
    fn head_hash(&self) -> zbus::Result<String>;

    /// Asks for BlockAdded, which the daemon emits only while someone is subscribed.
    fn subscribe(&self) -> zbus::Result<()>;

    fn unsubscribe(&self) -> zbus::Result<()>;

    #[zbus(signal)]
    fn block_added(
        &self,
        height: u64,
        hash: &str,
        plugin: &str,
        operation: &str,
    ) -> zbus::Result<()>;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let address = match args.iter().position(|a| a == "--address") {
        Some(i) if i + 1 < args.len() => {
            let address = args.remove(i + 1);
            args.remove(i);
            Some(address)
        }
        _ => None,
    };
    let [plugin, operation, data_json] = <[String; 3]>::try_from(args)
        .map_err(|_| anyhow::anyhow!("usage: client [--address ADDRESS] PLUGIN OPERATION JSON"))?;

    let connection = match &address {
        Some(address) => {
            zbus::connection::Builder::address(address.as_str())?
                .build()
                .await
        }
        None => zbus::Connection::system().await,
    }
    .context("cannot connect to the bus")?;
    let chain = BlockchainProxy::new(&connection).await?;

    match chain.add_footprint(&plugin, &operation, &data_json).await {
        Ok((height, hash)) => {
            println!("durable at height {height}: {hash}");
            let block = chain.get_block(&hash).await?;
            println!("{block}");
        }
        // The daemon's errors arrive as method errors named org.opdbus.Blockchain.Error.*;
        // the bus's own refusals as org.freedesktop.DBus.Error.*.
        Err(zbus::Error::MethodError(name, message, _)) => {
            let reason = message.unwrap_or_default();
            match name.as_str() {
                "org.opdbus.Blockchain.Error.InvalidArgument" => {
                    anyhow::bail!("refused, nothing written: {reason}")
                }
                "org.opdbus.Blockchain.Error.AccessDenied"
                | "org.freedesktop.DBus.Error.AccessDenied" => {
                    anyhow::bail!("not allowed to write: {reason}")
                }
                "org.opdbus.Blockchain.Error.StorageFailure" => {
                    anyhow::bail!("not recorded, retry later: {reason}")
                }
                other => anyhow::bail!("{other}: {reason}"),
            }
        }
        Err(err) => return Err(err).context("AddFootprint"),
    }
    println!("chain height now {}", chain.height().await?);
    Ok(())
}
