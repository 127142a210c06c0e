//! What the bus serves: [`BlockchainObject`]'s generated interface, with the two write methods
//! (`AddFootprint`, `AddFootprints`) on a path of their own.
//!
//! zbus runs every method call in a task of its own and answers it when the method returns. A
//! durable write would then cost a task, a wake-up of that task when its block is on disk, and
//! another task for `BlockAdded`: several thread wake-ups per footprint, more as cores are
//! added. Here a write is checked and queued right in zbus's dispatch task, without a task of
//! its own, as long as nothing makes it wait (the caller is known, the payload is small, the
//! writer's queue has room); otherwise it goes on as a task. The writer thread hands each
//! committed batch to one reply task, woken once per batch, which sends the replies and then
//! each block's `BlockAdded` (while anyone is subscribed), so a signal never precedes its reply.
//!
//! Every other method is dispatched to [`BlockchainObject`] as zbus would, in a task of its own.

use super::{BlockchainObject, Error, InFlightCall, Subscribers, BUS_NAME, OBJECT_PATH};
use crate::chain::block::{Caller, EncodedBlock};
use crate::chain::error::ChainError;
use crate::chain::writer::Ack;
use crate::footprint::PluginFootprint;
use crate::service::ServiceError;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use zbus::message::{Flags, Header};
use zbus::names::{InterfaceName, MemberName};
use zbus::object_server::{DispatchResult2, Interface, SignalEmitter};
use zbus::zvariant::{OwnedValue, Value};
use zbus::{fdo, Connection, Message, ObjectServer};

/// Payloads larger than this are checked in a task rather than in the dispatch task, so that a
/// large footprint does not hold up the calls behind it.
const INLINE_CHECK_BYTES: usize = 64 * 1024;

/// The interface registered at [`OBJECT_PATH`].
pub struct BlockchainInterface {
    object: Arc<BlockchainObject>,
    answers: UnboundedSender<Answer>,
}

impl BlockchainInterface {
    /// Serves `object`; starts the reply task (call within the runtime).
    pub fn new(object: BlockchainObject) -> Self {
        let (answers, queued) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(send_answers(queued, object.subscribers()));
        BlockchainInterface {
            object: Arc::new(object),
            answers,
        }
    }
}

/// Which write method a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteMethod {
    /// `AddFootprint(sss) → (ts)`
    One,
    /// `AddFootprints(a(sss)) → a(ts)`
    Many,
}

impl WriteMethod {
    fn of(member: &str) -> Option<WriteMethod> {
        match member {
            "AddFootprint" => Some(WriteMethod::One),
            "AddFootprints" => Some(WriteMethod::Many),
            _ => None,
        }
    }
}

/// A write call and what became of it, for the reply task.
struct Answer {
    connection: Connection,
    call: Message,
    method: WriteMethod,
    outcome: Result<Vec<Arc<EncodedBlock>>, ChainError>,
    /// The call stays counted as in flight until its reply is on the wire.
    _in_flight: InFlightCall,
}

/// Checks a write call and queues it, answering refusals at once. Driven by
/// [`run_inline_until_it_waits`]: everything before the first wait runs in the dispatch task.
async fn accept_write(
    object: Arc<BlockchainObject>,
    answers: UnboundedSender<Answer>,
    connection: Connection,
    call: Message,
    method: WriteMethod,
) {
    let in_flight = object.in_flight.enter();
    let header = call.header();
    let refuse = |error: Error| reply_error(&connection, &header, error);
    let footprints = match method {
        WriteMethod::One => call.body().deserialize::<(String, String, String)>().map(
            |(plugin, operation, data)| vec![PluginFootprint::received(plugin, operation, data)],
        ),
        WriteMethod::Many => call
            .body()
            .deserialize::<(Vec<(String, String, String)>,)>()
            .map(|(footprints,)| {
                footprints
                    .into_iter()
                    .map(|(plugin, operation, data)| {
                        PluginFootprint::received(plugin, operation, data)
                    })
                    .collect()
            }),
    };
    let footprints = match footprints {
        Ok(footprints) => footprints,
        Err(err) => {
            let expected = match method {
                WriteMethod::One => "(sss): plugin, operation, data_json",
                WriteMethod::Many => "a(sss): an array of (plugin, operation, data_json)",
            };
            return refuse(Error::ZBus(zbus::Error::FDO(Box::new(
                fdo::Error::InvalidArgs(format!("the arguments must be {expected}: {err}")),
            ))))
            .await;
        }
    };
    // Cheapest first: who calls (asked of the bus once per connection, the one wait a known
    // caller never has) before anything of the arguments is looked at.
    let caller = match object.caller(&header, &connection).await {
        Ok(caller) => caller,
        Err(err) => return refuse(err).await,
    };
    if let Err(refused) = object.require_writer(&caller, "add footprints") {
        log_refusal(
            &caller,
            &footprints,
            tracing::Level::WARN,
            "footprint refused: the caller may not write",
        );
        return refuse(refused).await;
    }
    let bytes: usize = footprints.iter().map(|f| f.data_json().len()).sum();
    if bytes > INLINE_CHECK_BYTES {
        tokio::task::yield_now().await;
    }
    let chain = object.chain.chain();
    let checked = match method {
        WriteMethod::One => chain.validate(&footprints[0]),
        WriteMethod::Many => chain.validate_batch(&footprints),
    };
    if let Err(err) = checked {
        // The caller's mistake, answered with InvalidArgument: info, not warning.
        log_refusal(
            &caller,
            &footprints,
            tracing::Level::INFO,
            &format!("footprint refused: {err}"),
        );
        return refuse(err.into()).await;
    }
    let room = match chain.try_room(footprints.len()) {
        Some(room) => room,
        None => match chain.room(footprints.len()).await {
            Ok(room) => room,
            Err(err) => return refuse(err.into()).await,
        },
    };
    let ack = Ack::Call(Box::new(move |outcome| {
        // The reply task ends only after the object (which holds a sender) is gone.
        let _ = answers.send(Answer {
            connection,
            call,
            method,
            outcome: outcome.map(<[_]>::to_vec).map_err(Clone::clone),
            _in_flight: in_flight,
        });
    }));
    chain.submit(footprints, caller, ack, room);
}

/// A refused write, for the operator of a misbehaving plugin: throttled, so that a caller
/// looping on a refused call cannot fill the journal. Names are shown escaped and cut (they may
/// be what was refused).
fn log_refusal(
    caller: &Caller,
    footprints: &[PluginFootprint],
    level: tracing::Level,
    message: &str,
) {
    let Some(left_out) = crate::journal::REFUSALS.admit() else {
        return;
    };
    let shown = |name: &str| -> String {
        name.chars()
            .take(crate::footprint::MAX_NAME_BYTES + 1)
            .flat_map(char::escape_default)
            .collect()
    };
    let first = footprints.first();
    // tracing's macros take the level as a constant: one call per level.
    macro_rules! refused {
        ($event:ident) => {
            tracing::$event!(
                message_id = crate::journal::FOOTPRINT_REFUSED,
                PLUGIN = first.map(|f| shown(&f.plugin_id)),
                OPERATION = first.map(|f| shown(&f.operation)),
                FOOTPRINTS = footprints.len(),
                CALLER_UID = caller.uid,
                CALLER_UNIT = crate::journal::non_empty(&caller.unit),
                LEFT_OUT = (left_out > 0).then_some(left_out),
                "{message}"
            )
        };
    }
    if level == tracing::Level::WARN {
        refused!(warn);
    } else {
        refused!(info);
    }
}

async fn reply_error(connection: &Connection, header: &Header<'_>, error: Error) {
    if header.primary().flags().contains(Flags::NoReplyExpected) {
        return;
    }
    if let Err(err) = connection.reply_dbus_error(header, error).await {
        tracing::debug!(%err, "cannot send an error reply");
    }
}

/// The reply task: for each batch the writer committed, every reply, then every `BlockAdded`
/// (while anyone is subscribed).
async fn send_answers(mut queued: UnboundedReceiver<Answer>, subscribers: Subscribers) {
    let mut answers = Vec::new();
    while queued.recv_many(&mut answers, 4096).await > 0 {
        for answer in &answers {
            answer.reply().await;
        }
        for answer in answers.drain(..) {
            let Ok(blocks) = &answer.outcome else {
                continue;
            };
            // Read for each call, so that a block committed after a Subscribe was answered is
            // signalled.
            let emitter = subscribers
                .any()
                .then(|| SignalEmitter::new(&answer.connection, OBJECT_PATH).ok())
                .flatten();
            for block in blocks {
                tracing::debug!(
                    BLOCK_HEIGHT = block.height,
                    BLOCK_HASH = %block.hash_hex(),
                    PLUGIN = %block.plugin,
                    OPERATION = %block.operation,
                    CALLER_UID = block.caller.uid,
                    CALLER_UNIT = crate::journal::non_empty(&block.caller.unit),
                    "block {} added: {} {}",
                    block.height,
                    block.plugin,
                    block.operation
                );
                if let Some(emitter) = &emitter {
                    super::emit_block_added(emitter, block).await;
                }
            }
        }
    }
}

impl Answer {
    async fn reply(&self) {
        let header = self.call.header();
        let blocks = match &self.outcome {
            Ok(blocks) => blocks,
            Err(err) => {
                // The writer logged the failed batch once (WRITE_FAILED, STORAGE_LATCHED);
                // every caller in it gets StorageFailure.
                tracing::debug!(%err, "footprints not committed");
                let error = Error::from(ServiceError::Chain(err.clone()));
                return reply_error(&self.connection, &header, error).await;
            }
        };
        if header.primary().flags().contains(Flags::NoReplyExpected) {
            return;
        }
        let sent = match self.method {
            WriteMethod::One => {
                let block = &blocks[0];
                self.connection
                    .reply(&header, &(block.height, block.hash_hex()))
                    .await
            }
            WriteMethod::Many => {
                let added: Vec<(u64, String)> = blocks
                    .iter()
                    .map(|block| (block.height, block.hash_hex()))
                    .collect();
                self.connection.reply(&header, &added).await
            }
        };
        if let Err(err) = sent {
            tracing::debug!(%err, "cannot send a reply");
        }
    }
}

/// Polls `future` once right here; if it has to wait, it goes on as a task. (A future may be
/// polled with another waker each time: the task's own replaces the no-op one.)
fn run_inline_until_it_waits(future: impl Future<Output = ()> + Send + 'static) {
    let mut future = Box::pin(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    if future.as_mut().poll(&mut context).is_pending() {
        tokio::spawn(future);
    }
}

/// Runs a call to one of [`BlockchainObject`]'s generated methods in a task, as zbus does.
async fn dispatch_in_task(object: Arc<BlockchainObject>, connection: Connection, call: Message) {
    let header = call.header();
    let Some(member) = header.member() else {
        return;
    };
    let server = connection.object_server();
    let done = match Interface::call(&*object, server, &connection, &call, member.as_ref()) {
        DispatchResult2::Async(future) => future.await,
        DispatchResult2::NotFound | DispatchResult2::RequiresMut => Err(fdo::Error::UnknownMethod(
            format!("Unknown method '{member}'"),
        )),
    };
    if let Err(err) = done {
        if let Err(err) = connection.reply_dbus_error(&header, err).await {
            tracing::debug!(%err, "cannot send an error reply");
        }
    }
}

/// A method for introspection: name, documentation lines, and (name, signature, direction) of
/// each argument.
type MethodXml = (
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str, &'static str)],
);

/// The write methods in introspection, with their documentation, as zbus writes a method.
const WRITE_METHODS_XML: &[MethodXml] = &[
    (
        "AddFootprint",
        &["Adds a footprint; returns once its block is durable."],
        &[
            ("plugin", "s", "in"),
            ("operation", "s", "in"),
            ("data_json", "s", "in"),
            ("height", "t", "out"),
            ("hash", "s", "out"),
        ],
    ),
    (
        "AddFootprints",
        &[
            "Adds footprints as one batch, each its own block at consecutive heights,",
            "committed together, all or nothing: an invalid footprint refuses the whole call",
            "(InvalidArgument names it, counting from 0) and nothing is added. At most 1000",
            "footprints and 16 MiB of data per call. Returns each block's height and hash, in",
            "order, once durable.",
        ],
        &[("footprints", "a(sss)", "in"), ("added", "a(ts)", "out")],
    ),
];

fn introspect_write_methods(writer: &mut dyn std::fmt::Write, level: usize) {
    for (name, docs, args) in WRITE_METHODS_XML {
        let _ = writeln!(writer, "{:level$}<!--", "");
        for line in *docs {
            let _ = writeln!(writer, "{:level$} {line}", "");
        }
        let _ = writeln!(writer, "{:level$} -->", "");
        let _ = writeln!(writer, "{:level$}<method name=\"{name}\">", "");
        for (arg, signature, direction) in *args {
            let _ = writeln!(
                writer,
                "{:indent$}<arg name=\"{arg}\" type=\"{signature}\" direction=\"{direction}\"/>",
                "",
                indent = level + 2
            );
        }
        let _ = writeln!(writer, "{:level$}</method>", "");
    }
}

#[zbus::export::async_trait::async_trait]
impl Interface for BlockchainInterface {
    fn name() -> InterfaceName<'static> {
        InterfaceName::from_static_str_unchecked(BUS_NAME)
    }

    /// Calls are dispatched here, in zbus's dispatch task; see the module text.
    fn spawn_tasks_for_methods(&self) -> bool {
        false
    }

    async fn get(
        &self,
        property_name: &str,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> Option<fdo::Result<OwnedValue>> {
        self.object
            .get(property_name, server, connection, header, emitter)
            .await
    }

    async fn get_all(
        &self,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> fdo::Result<HashMap<String, OwnedValue>> {
        self.object
            .get_all(server, connection, header, emitter)
            .await
    }

    fn set<'call>(
        &'call self,
        property_name: &'call str,
        value: &'call Value<'_>,
        server: &'call ObjectServer,
        connection: &'call Connection,
        header: Option<&'call Header<'_>>,
        emitter: &'call SignalEmitter<'_>,
    ) -> DispatchResult2<'call> {
        self.object
            .set(property_name, value, server, connection, header, emitter)
    }

    /// Every property is read-only: [`Interface::set`] answers them all.
    async fn set_mut(
        &mut self,
        _property_name: &str,
        _value: &Value<'_>,
        _server: &ObjectServer,
        _connection: &Connection,
        _header: Option<&Header<'_>>,
        _emitter: &SignalEmitter<'_>,
    ) -> Option<fdo::Result<()>> {
        None
    }

    fn call<'call>(
        &'call self,
        _server: &'call ObjectServer,
        connection: &'call Connection,
        msg: &'call Message,
        name: MemberName<'call>,
    ) -> DispatchResult2<'call> {
        let (object, connection, call) = (self.object.clone(), connection.clone(), msg.clone());
        match WriteMethod::of(name.as_str()) {
            Some(method) => run_inline_until_it_waits(accept_write(
                object,
                self.answers.clone(),
                connection,
                call,
                method,
            )),
            // A block in RAM is answered right here, as a write is queued: no task is woken
            // for it. A read from disk waits on the blocking pool and so goes on as a task.
            None if matches!(name.as_str(), "GetBlock" | "GetBlockByHeight") => {
                run_inline_until_it_waits(dispatch_in_task(object, connection, call));
            }
            None => {
                tokio::spawn(dispatch_in_task(object, connection, call));
            }
        }
        DispatchResult2::Async(Box::pin(std::future::ready(Ok(()))))
    }

    fn call_mut<'call>(
        &'call mut self,
        _server: &'call ObjectServer,
        _connection: &'call Connection,
        _msg: &'call Message,
        _name: MemberName<'call>,
    ) -> DispatchResult2<'call> {
        DispatchResult2::NotFound
    }

    /// [`BlockchainObject`]'s interface with the write methods first.
    fn introspect_to_writer(&self, writer: &mut dyn std::fmt::Write, level: usize) {
        let mut generated = String::new();
        self.object.introspect_to_writer(&mut generated, level);
        let (opening, rest) = generated.split_at(generated.find('\n').map_or(0, |at| at + 1));
        let _ = writer.write_str(opening);
        introspect_write_methods(writer, level + 2);
        let _ = writer.write_str(rest);
    }
}
