//! The command server: request/reply on this device's command subject, one
//! task per request, a typed JSON reply to everything — including garbage.

use crate::clock::Clock;
use crate::shared::{DeviceFacts, StatusBoard, AGENT_VERSION};
use crate::upgrade::UpgradeHandle;
use futures::StreamExt;
use harmony_protocol::command::{Command, CommandReply, ReplyBody};
use harmony_protocol::names::command_subject;
use harmony_protocol::CommandError;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Requests served at once; beyond that a request is answered "busy" rather
/// than queueing without bound.
const MAX_IN_FLIGHT: usize = 32;

#[derive(Debug, Clone)]
pub struct CommandServer {
    pub client: async_nats::Client,
    pub facts: Arc<DeviceFacts>,
    pub board: Arc<StatusBoard>,
    pub clock: Arc<dyn Clock>,
    pub upgrade: UpgradeHandle,
}

impl CommandServer {
    /// Serve until the subscription ends (only when the client is closed).
    pub async fn run(self) -> Result<(), async_nats::SubscribeError> {
        let subject = command_subject(&self.facts.device_id);
        let mut requests = self.client.subscribe(subject.clone()).await?;
        log::info!("serving commands on {subject}");
        let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        while let Some(msg) = requests.next().await {
            let Some(reply_to) = msg.reply.clone() else {
                log::warn!("ignoring a command without a reply subject");
                continue;
            };
            let server = self.clone();
            match permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    tokio::spawn(async move {
                        let reply = CommandReply::from_result(server.dispatch(&msg.payload).await);
                        server.reply(reply_to, reply).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    let busy = CommandReply::from_result(Err(CommandError::Refused {
                        detail: format!("{MAX_IN_FLIGHT} commands already in flight"),
                    }));
                    tokio::spawn(async move { server.reply(reply_to, busy).await });
                }
            }
        }
        Ok(())
    }

    async fn reply(&self, to: async_nats::Subject, reply: CommandReply) {
        if let Err(e) = self.client.publish(to, reply.encode().into()).await {
            log::warn!("could not send command reply: {e}");
        }
    }

    pub async fn dispatch(&self, payload: &[u8]) -> Result<ReplyBody, CommandError> {
        let command = Command::decode(payload).inspect_err(|e| log::warn!("rejected command: {e}"))?;
        log::info!("command {}", command.verb());
        match command {
            Command::Ping => Ok(ReplyBody::Pong {
                agent_version: AGENT_VERSION.to_string(),
                uptime_secs: self.facts.uptime_secs(),
                booted_slot: self.facts.booted_slot.clone(),
                boot_id: self.facts.boot_id.clone(),
            }),
            Command::Status => Ok(ReplyBody::Status {
                heartbeat: Box::new(self.board.current_heartbeat(&self.facts, self.clock.now())),
            }),
            Command::Commit(args) => self.upgrade.commit(args).await,
            Command::Reboot => self.upgrade.reboot().await,
        }
    }
}
