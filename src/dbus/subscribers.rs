//! Who asked for `BlockAdded`.
//!
//! A signal is a message the bus must read, parse and match even when nobody listens: at
//! thousands of footprints a second, one `BlockAdded` per block costs dbus-daemon about as much
//! as the call itself (docs/benchmarks.md). So, as systemd's manager does with its unit and job
//! signals, the daemon emits `BlockAdded` only while at least one client that called
//! `Subscribe` is still on the bus. The signal is broadcast as before: while anyone is
//! subscribed, every client with a matching rule receives it.
//!
//! A subscription belongs to the caller's unique bus name and ends with `Unsubscribe` or when
//! that name leaves the bus, seen with a `NameOwnerChanged` match on that one name (so that
//! other clients' comings and goings cost the daemon nothing). Only the bus itself can end a
//! subscription that way: a `NameOwnerChanged` that another client sends to the daemon directly
//! is ignored. Each unprivileged uid may hold [`MAX_SUBSCRIBERS_PER_UID`] subscriptions, and
//! all of them together [`MAX_SUBSCRIBERS`], counted from the moment a `Subscribe` call starts,
//! so that local users cannot make the daemon hold an unbounded set of names and match rules.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use zbus::names::{BusName, UniqueName};
use zbus::{Connection, MatchRule, MessageStream};

/// Subscriptions one unprivileged uid may hold at once.
pub const MAX_SUBSCRIBERS_PER_UID: usize = 16;
/// Subscriptions all unprivileged callers together may hold at once (each is one match rule on
/// the daemon's bus connection; dbus-daemon allows a connection 512 on the system bus).
pub const MAX_SUBSCRIBERS: usize = 256;

const BUS_DRIVER: &str = "org.freedesktop.DBus";
/// How long a second Subscribe of one connection waits for the first (the bus's own default
/// call timeout).
const PENDING_WAIT: std::time::Duration = std::time::Duration::from_secs(25);

/// Why a `Subscribe` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeError {
    /// A limit on subscriptions (per uid, in all).
    Limit(String),
    /// The bus did not take the daemon's watch of the caller, or could not say whether the
    /// caller is still there.
    Bus(String),
}

/// What [`Subscribers::reserve`] found.
enum Reserved {
    /// A new reservation.
    Token(u64),
    /// The name is subscribed.
    Active,
    /// A Subscribe of the name is in progress.
    Pending,
}

/// The subscribers of `BlockAdded`; cheap to clone, all clones share one set.
#[derive(Debug, Clone, Default)]
pub struct Subscribers(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// Subscriptions in place, read without the lock for every committed call.
    active: AtomicUsize,
    /// Tells one `Subscribe` call's reservation from another's.
    tokens: AtomicU64,
    names: parking_lot::Mutex<HashMap<String, Subscription>>,
}

#[derive(Debug)]
struct Subscription {
    /// The uid it counts against; `None` when it is not counted (root, the daemon's own).
    uid: Option<Option<u32>>,
    state: State,
}

#[derive(Debug)]
enum State {
    /// A `Subscribe` call in progress (the match rule being added): counted against the limits,
    /// not yet signalled.
    Pending(u64),
    /// In place; the task that waits for the name to leave the bus (none on a peer-to-peer
    /// connection).
    Active(Option<tokio::task::AbortHandle>),
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let State::Active(Some(watch)) = &self.state {
            watch.abort();
        }
    }
}

impl Subscribers {
    /// Whether `BlockAdded` should be emitted now.
    pub fn any(&self) -> bool {
        self.0.active.load(Ordering::SeqCst) > 0
    }

    /// Subscribes `sender` (the caller's unique name; `None` on a peer-to-peer connection),
    /// whose uid is `uid` (`counted`: whether it counts against the limits). Returns once the
    /// subscription is in place, so that every block committed after the reply is signalled.
    /// Subscribing again is not an error; it changes nothing.
    pub async fn subscribe(
        &self,
        connection: &Connection,
        sender: Option<&UniqueName<'_>>,
        uid: Option<u32>,
        counted: bool,
    ) -> Result<(), SubscribeError> {
        let key = counted.then_some(uid);
        let name = sender.map_or("", |s| s.as_str());
        let mut waited = std::time::Duration::ZERO;
        let token = loop {
            match self.reserve(name, key)? {
                Reserved::Token(token) => break token,
                Reserved::Active => return Ok(()),
                // Another Subscribe of this connection is in progress: answer once it is done,
                // so that this reply too comes after the subscription is in place.
                Reserved::Pending if waited < PENDING_WAIT => {
                    let pause = std::time::Duration::from_millis(5);
                    tokio::time::sleep(pause).await;
                    waited += pause;
                }
                Reserved::Pending => {
                    return Err(SubscribeError::Bus(format!(
                        "another Subscribe of {name} has waited for the bus for {} s",
                        PENDING_WAIT.as_secs()
                    )))
                }
            }
        };
        let Some(sender) = sender else {
            // A peer-to-peer connection: the one peer is subscribed until the daemon stops.
            self.activate(name, token, None);
            return Ok(());
        };
        match self.watch(connection, sender).await {
            Ok(Some(watch)) => self.activate(name, token, Some(watch)),
            // The name left before the rule was in place: nobody is left to signal.
            Ok(None) => self.release(name, token),
            Err(err) => {
                self.release(name, token);
                return Err(SubscribeError::Bus(err));
            }
        }
        Ok(())
    }

    /// Ends `sender`'s subscription, if it has one (also one whose `Subscribe` is in progress).
    pub fn unsubscribe(&self, sender: Option<&UniqueName<'_>>) {
        self.remove(sender.map_or("", |s| s.as_str()));
    }

    /// Starts watching `sender` leave the bus; returns the watching task once the match rule is
    /// in place, or `None` when the name had left already.
    async fn watch(
        &self,
        connection: &Connection,
        sender: &UniqueName<'_>,
    ) -> Result<Option<tokio::task::AbortHandle>, String> {
        let rule = MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(BUS_DRIVER)
            .and_then(|b| b.interface(BUS_DRIVER))
            .and_then(|b| b.member("NameOwnerChanged"))
            .and_then(|b| b.path("/org/freedesktop/DBus"))
            .and_then(|b| b.arg(0, sender.as_str()))
            .map_err(|e| format!("cannot watch {sender}: {e}"))?
            .build();
        let gone = MessageStream::for_match_rule(rule, connection, Some(16))
            .await
            .map_err(|e| format!("the bus refused to watch {sender} for its subscription: {e}"))?;
        // Read from now on: zbus stops reading the connection while a stream's queue is full,
        // so a stream nobody reads, even for the length of one call, could stall every call.
        let watch = tokio::spawn(wait_until_gone(gone, self.clone(), sender.to_string()));
        let present = match zbus::fdo::DBusProxy::new(connection).await {
            Ok(proxy) => proxy
                .name_has_owner(BusName::Unique(sender.to_owned()))
                .await
                .map_err(|e| format!("cannot ask the bus about {sender}: {e}")),
            Err(e) => Err(format!("cannot ask the bus about {sender}: {e}")),
        };
        if !matches!(present, Ok(true)) {
            watch.abort();
        }
        present.map(|present| present.then(|| watch.abort_handle()))
    }

    /// Counts a subscription of `name` against the limits before any work is done for it.
    fn reserve(&self, name: &str, uid: Option<Option<u32>>) -> Result<Reserved, SubscribeError> {
        let mut names = self.0.names.lock();
        match names.get(name).map(|s| &s.state) {
            Some(State::Active(_)) => return Ok(Reserved::Active),
            Some(State::Pending(_)) => return Ok(Reserved::Pending),
            None => {}
        }
        limits(&names, uid).map_err(SubscribeError::Limit)?;
        let token = self.0.tokens.fetch_add(1, Ordering::Relaxed);
        names.insert(
            name.to_owned(),
            Subscription {
                uid,
                state: State::Pending(token),
            },
        );
        Ok(Reserved::Token(token))
    }

    /// Puts the reservation `token` of `name` in place, unless it was ended meanwhile
    /// (`Unsubscribe`, the name left): then the watch ends too.
    fn activate(&self, name: &str, token: u64, watch: Option<tokio::task::AbortHandle>) {
        let mut names = self.0.names.lock();
        match names.get_mut(name) {
            Some(subscription) if matches!(subscription.state, State::Pending(t) if t == token) => {
                subscription.state = State::Active(watch);
                tracing::debug!(SUBSCRIBER = %name, "BlockAdded subscribed");
                self.0.active.fetch_add(1, Ordering::SeqCst);
            }
            _ => {
                if let Some(watch) = watch {
                    watch.abort();
                }
            }
        }
    }

    /// Drops the reservation `token` of `name` (its Subscribe failed).
    fn release(&self, name: &str, token: u64) {
        let mut names = self.0.names.lock();
        if matches!(names.get(name), Some(s) if matches!(s.state, State::Pending(t) if t == token))
        {
            names.remove(name);
        }
    }

    fn remove(&self, name: &str) {
        let mut names = self.0.names.lock();
        if let Some(subscription) = names.remove(name) {
            if matches!(subscription.state, State::Active(_)) {
                tracing::debug!(SUBSCRIBER = %name, "BlockAdded unsubscribed");
                self.0.active.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// Refuses one more subscription for `uid` if it would pass a limit (`None`: not counted).
fn limits(names: &HashMap<String, Subscription>, uid: Option<Option<u32>>) -> Result<(), String> {
    let Some(uid) = uid else {
        return Ok(());
    };
    let counted = names.values().filter(|s| s.uid.is_some()).count();
    if counted >= MAX_SUBSCRIBERS {
        return Err(format!(
            "{counted} connections are subscribed to BlockAdded, the most the daemon keeps for \
             callers other than root: retry later, or follow the chain with Query"
        ));
    }
    let mine = names.values().filter(|s| s.uid == Some(uid)).count();
    if mine >= MAX_SUBSCRIBERS_PER_UID {
        return Err(format!(
            "uid {} holds {mine} subscriptions to BlockAdded; the limit is \
             {MAX_SUBSCRIBERS_PER_UID} per uid: one per connection is enough",
            uid.map_or("unknown".into(), |u| u.to_string())
        ));
    }
    Ok(())
}

/// Waits for the bus to say that `name` left, then ends its subscription.
async fn wait_until_gone(mut gone: MessageStream, subscribers: Subscribers, name: String) {
    loop {
        let next = super::next_message(&mut gone).await;
        let Some(message) = next else {
            break; // the daemon's connection closed
        };
        if message.is_ok_and(|message| says_it_left(&message, &name)) {
            break;
        }
    }
    subscribers.remove(&name);
}

/// Whether `message` is the bus's `NameOwnerChanged` saying that `name` left. zbus cannot match
/// a rule's well-known sender on its side, so the sender is checked here: a client's own
/// `NameOwnerChanged`, sent to the daemon, says nothing.
fn says_it_left(message: &zbus::Message, name: &str) -> bool {
    let header = message.header();
    let from_the_bus =
        header.sender().is_some_and(|s| s.as_str() == BUS_DRIVER) && header.destination().is_none();
    from_the_bus
        && message
            .body()
            .deserialize::<(&str, &str, &str)>()
            .is_ok_and(|(changed, _, new_owner)| changed == name && new_owner.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_owner_changed(
        sender: &str,
        destination: Option<&str>,
        body: (&str, &str, &str),
    ) -> zbus::Message {
        let mut builder =
            zbus::Message::signal("/org/freedesktop/DBus", BUS_DRIVER, "NameOwnerChanged")
                .and_then(|b| b.sender(sender))
                .expect("builder");
        if let Some(destination) = destination {
            builder = builder.destination(destination).expect("destination");
        }
        builder.build(&body).expect("message")
    }

    #[test]
    fn only_the_bus_says_that_a_subscriber_left() {
        let left = (":1.7", ":1.7", "");
        assert!(says_it_left(
            &name_owner_changed(BUS_DRIVER, None, left),
            ":1.7"
        ));
        // Another name, or one that arrived rather than left.
        assert!(!says_it_left(
            &name_owner_changed(BUS_DRIVER, None, left),
            ":1.8"
        ));
        let arrived = (":1.7", "", ":1.7");
        assert!(!says_it_left(
            &name_owner_changed(BUS_DRIVER, None, arrived),
            ":1.7"
        ));
        // Forged: sent by a client, or sent to the daemon alone.
        assert!(!says_it_left(
            &name_owner_changed(":1.9", None, left),
            ":1.7"
        ));
        let to_the_daemon = name_owner_changed(BUS_DRIVER, Some("org.opdbus.Blockchain"), left);
        assert!(!says_it_left(&to_the_daemon, ":1.7"));
    }
}
