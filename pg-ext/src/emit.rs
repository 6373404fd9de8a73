//! `txevents.emit`, `invalidate`, `invalidate_namespace` and `get`: write an event into
//! the outbox and queue its NOTIFY; read one back as an envelope.

use cachetx_shared::{
    validate_prefix, CacheInvalidation, InvalidationScope, NotifyPayload, RawEnvelope, Timestamp,
    FORMAT_VERSION, INVALIDATE_EVENT_TYPE,
};
use pgrx::prelude::*;
use pgrx::JsonB;

use crate::error::{TxEventsError, TxResult};
use crate::guc::{self, NotifyMode};
use crate::jsonb::{self, RawJsonb};
use crate::metrics_store::EventCounter;
use crate::{notify, outbox, validate};

/// Emits one event in the current transaction and returns its id.
#[pg_extern(name = "emit", security_definer)]
#[search_path(@extschema@, pg_catalog, pg_temp)]
fn txevents_emit(
    event_type: Option<&str>,
    payload: default!(Option<RawJsonb>, "'{}'"),
    aggregate_type: default!(Option<&str>, "NULL"),
    aggregate_id: default!(Option<&str>, "NULL"),
    headers: default!(Option<RawJsonb>, "'{}'"),
) -> i64 {
    let event = NewEvent {
        event_type,
        payload: payload.map(Json::Raw),
        aggregate_type,
        aggregate_id,
        headers: headers.map(Json::Raw),
    };
    emit(event).unwrap_or_else(|e| e.raise())
}

/// The arguments of one emit, as SQL passed them.
pub struct NewEvent<'a> {
    /// `<aggregate>.<what happened>`, e.g. `candidate.created`.
    pub event_type: Option<&'a str>,
    /// The event body; a JSON object.
    pub payload: Option<Json>,
    /// Kind of the entity the event is about.
    pub aggregate_type: Option<&'a str>,
    /// Id of that entity.
    pub aggregate_id: Option<&'a str>,
    /// Metadata (trace ids, actor); a JSON object.
    pub headers: Option<Json>,
}

/// A JSON argument: as SQL passed it, or built in Rust.
pub enum Json {
    /// A `jsonb` datum, stored as it came.
    Raw(RawJsonb),
    /// A value built by the extension (e.g. an invalidation payload).
    Value(serde_json::Value),
}

/// A JSON argument checked to be an object.
struct CheckedObject {
    json: Json,
}

impl CheckedObject {
    fn new(field: &'static str, raw: Option<Json>) -> TxResult<Self> {
        match raw {
            None => Err(TxEventsError::NullArgument(field)),
            Some(Json::Raw(raw)) if raw.is_object() => Ok(CheckedObject {
                json: Json::Raw(raw),
            }),
            // Only to name what was passed instead (never parsed into serde: a
            // number serde cannot hold must not change the message).
            Some(Json::Raw(raw)) => Err(TxEventsError::NotAnObject {
                field,
                found: validate::jsonb_kind(&raw.kind()),
            }),
            Some(Json::Value(v)) => validate::object(field, Some(v)).map(|m| CheckedObject {
                json: Json::Value(serde_json::Value::Object(m)),
            }),
        }
    }

    /// The datum to store.
    fn datum(&self) -> TxResult<pgrx::pg_sys::Datum> {
        match &self.json {
            Json::Raw(raw) => Ok(raw.detoasted()),
            Json::Value(v) => JsonB(v.clone())
                .into_datum()
                .ok_or_else(|| TxEventsError::Internal("jsonb conversion failed".into())),
        }
    }
}

/// Validates, inserts and queues the NOTIFY of one event.
pub fn emit(event: NewEvent<'_>) -> TxResult<i64> {
    let event_type = validate::event_type(event.event_type)?;
    let payload = CheckedObject::new("payload", event.payload)?;
    let headers = CheckedObject::new("headers", event.headers)?;
    let notify_mode = guc::NOTIFY.get();
    let channel = match notify_mode {
        NotifyMode::Commit | NotifyMode::Coalesced => {
            Some(notify::check_channel(&guc::channel()?)?)
        }
        NotifyMode::Off => None,
    };

    // SAFETY: plain function returning the current time.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let payload = payload.datum()?;
    let headers = headers.datum()?;
    let (id, txid) = outbox::insert(outbox::Row {
        event_type,
        aggregate_type: event.aggregate_type,
        aggregate_id: event.aggregate_id,
        payload,
        headers,
        occurred_at: now,
    })?;
    crate::metrics::count(EventCounter::Emitted, 1);
    if notify_mode == NotifyMode::Coalesced {
        if let Some(channel) = channel {
            // The worker reads the event back and sends the same payload as below.
            crate::coalesced::mark(txid, channel)?;
        }
    } else if let Some(channel) = channel {
        // The stored jsonb's own text, spliced in verbatim: the notification carries
        // every number exactly as txevents.get(id) returns it (SPEC 3.2).
        let payload = jsonb::text_of(payload)?;
        let headers = jsonb::text_of(headers)?;
        let fields = EnvelopeFields {
            id,
            event_type,
            aggregate_type: event.aggregate_type,
            aggregate_id: event.aggregate_id,
            payload,
            headers,
            occurred_micros: now,
            txid,
        };
        notify::queue(channel, fields.notification()?)?;
    }
    Ok(id)
}

/// One event's envelope fields, with payload and headers as their jsonb text.
struct EnvelopeFields<'a> {
    id: i64,
    event_type: &'a str,
    aggregate_type: Option<&'a str>,
    aggregate_id: Option<&'a str>,
    payload: String,
    headers: String,
    occurred_micros: i64,
    txid: u64,
}

impl EnvelopeFields<'_> {
    /// Runs `f` on the envelope, payload and headers as raw JSON.
    fn with_raw<T>(self, f: impl FnOnce(&RawEnvelope<'_>) -> T) -> TxResult<T> {
        // jsonb_out always writes valid JSON; failing here means a corrupt value.
        let raw = |what: &str, text: String| {
            serde_json::value::RawValue::from_string(text).map_err(|e| {
                TxEventsError::Internal(format!("the stored {what} is not valid JSON text: {e}"))
            })
        };
        let payload = raw("payload", self.payload)?;
        let headers = raw("headers", self.headers)?;
        Ok(f(&RawEnvelope {
            v: FORMAT_VERSION,
            id: self.id,
            event_type: self.event_type,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            payload: &payload,
            headers: &headers,
            occurred_at: Timestamp::from_postgres_micros(self.occurred_micros),
            txid: Some(self.txid),
        }))
    }

    /// The NOTIFY payload: the envelope inline, or a reference when it is too large.
    fn notification(self) -> TxResult<String> {
        if self.payload.len() + self.headers.len() > cachetx_shared::NOTIFY_PAYLOAD_LIMIT {
            // Cannot fit: skip checking megabytes of JSON only to send the reference.
            return Ok(NotifyPayload::Ref {
                id: self.id,
                event_type: self.event_type.to_string(),
            }
            .to_json());
        }
        self.with_raw(NotifyPayload::encode_for_raw_envelope)
    }

    /// The envelope's JSON text, as `txevents.get` returns it.
    fn envelope_json(self) -> TxResult<String> {
        self.with_raw(|e| e.to_json())
    }
}

/// Emits a `cache.invalidate` event for `keys` of namespace `prefix` (SPEC 3.1).
#[pg_extern(name = "invalidate", security_definer)]
#[search_path(@extschema@, pg_catalog, pg_temp)]
fn txevents_invalidate(prefix: Option<&str>, keys: Option<VariadicArray<'_, String>>) -> i64 {
    let keys = match keys {
        Some(keys) => keys,
        None => TxEventsError::NullArgument("keys").raise(),
    };
    invalidation(prefix, Some(keys))
        .and_then(emit_invalidation)
        .unwrap_or_else(|e| e.raise())
}

/// Emits a `cache.invalidate` event for the whole namespace `prefix`.
#[pg_extern(name = "invalidate_namespace", security_definer)]
#[search_path(@extschema@, pg_catalog, pg_temp)]
fn txevents_invalidate_namespace(prefix: Option<&str>) -> i64 {
    invalidation(prefix, None)
        .and_then(emit_invalidation)
        .unwrap_or_else(|e| e.raise())
}

fn invalidation(
    prefix: Option<&str>,
    keys: Option<VariadicArray<'_, String>>,
) -> TxResult<CacheInvalidation> {
    let prefix = prefix.ok_or(TxEventsError::NullArgument("prefix"))?;
    let prefix = validate_prefix(prefix.as_bytes())?.to_string();
    let scope = match keys {
        None => InvalidationScope::Namespace,
        Some(keys) => {
            let keys = keys
                .iter()
                .map(|k| k.ok_or(TxEventsError::NullArgument("keys element")))
                .collect::<TxResult<Vec<String>>>()?;
            if keys.is_empty() {
                return Err(TxEventsError::InvalidArgument(
                    "keys must name at least one key (use txevents.invalidate_namespace for all)"
                        .into(),
                ));
            }
            InvalidationScope::Keys(keys)
        }
    };
    Ok(CacheInvalidation { prefix, scope })
}

fn emit_invalidation(invalidation: CacheInvalidation) -> TxResult<i64> {
    emit(NewEvent {
        event_type: Some(INVALIDATE_EVENT_TYPE),
        payload: Some(Json::Value(invalidation.to_value())),
        aggregate_type: None,
        aggregate_id: None,
        headers: Some(Json::Value(serde_json::Value::Object(
            serde_json::Map::new(),
        ))),
    })
}

/// The event `id` as its envelope (the same JSON as an inline notification carries,
/// payload and headers verbatim), or NULL if there is no such event (never emitted,
/// rolled back, or pruned).
#[pg_extern(name = "get", security_definer, strict, stable)]
#[search_path(@extschema@, pg_catalog, pg_temp)]
fn txevents_get(id: i64) -> Option<RawJsonb> {
    let text = match envelope_json(id) {
        Ok(Some(text)) => text,
        Ok(None) => return None,
        Err(e) => e.raise(),
    };
    Some(jsonb::from_text(text).unwrap_or_else(|e| e.raise()))
}

/// The columns of `txevents.outbox` that [`StoredEvent::from_row`] reads, in order.
macro_rules! stored_columns {
    () => {
        "id, event_type, aggregate_type, aggregate_id, payload::text, headers::text, \
         occurred_at, txid::text"
    };
}

/// An outbox row as read back, payload and headers as their jsonb text.
struct StoredEvent {
    id: i64,
    event_type: String,
    aggregate_type: Option<String>,
    aggregate_id: Option<String>,
    payload: String,
    headers: String,
    occurred_micros: i64,
    txid: u64,
}

impl StoredEvent {
    /// Reads the [`stored_columns!`] of `row`.
    fn from_row(row: &pgrx::spi::SpiHeapTupleData<'_>) -> TxResult<StoredEvent> {
        let id: i64 = row
            .get(1)?
            .ok_or_else(|| TxEventsError::Internal("an event has a NULL id".into()))?;
        // The columns are NOT NULL: a NULL here is a corrupt row, not a default.
        let required = |what: &'static str| {
            TxEventsError::Internal(format!("event {id} has a NULL {what} in txevents.outbox"))
        };
        let occurred_at: TimestampWithTimeZone =
            row.get(7)?.ok_or_else(|| required("occurred_at"))?;
        let txid: String = row.get(8)?.ok_or_else(|| required("txid"))?;
        let txid: u64 = txid.parse().map_err(|_| {
            TxEventsError::Internal(format!("event {id} has an unreadable txid {txid:?}"))
        })?;
        Ok(StoredEvent {
            id,
            event_type: row.get(2)?.ok_or_else(|| required("event_type"))?,
            aggregate_type: row.get(3)?,
            aggregate_id: row.get(4)?,
            payload: row.get(5)?.ok_or_else(|| required("payload"))?,
            headers: row.get(6)?.ok_or_else(|| required("headers"))?,
            occurred_micros: occurred_at.into_inner(),
            txid,
        })
    }

    fn fields(&self) -> EnvelopeFields<'_> {
        EnvelopeFields {
            id: self.id,
            event_type: &self.event_type,
            aggregate_type: self.aggregate_type.as_deref(),
            aggregate_id: self.aggregate_id.as_deref(),
            payload: self.payload.clone(),
            headers: self.headers.clone(),
            occurred_micros: self.occurred_micros,
            txid: self.txid,
        }
    }
}

/// Reads the row of event `id` and writes its envelope.
fn envelope_json(id: i64) -> TxResult<Option<String>> {
    let event = Spi::connect(|client| {
        let table = client.select(
            concat!(
                "SELECT ",
                stored_columns!(),
                " FROM txevents.outbox WHERE id = $1"
            ),
            Some(1),
            &[id.into()],
        )?;
        match table.into_iter().next() {
            Some(row) => StoredEvent::from_row(&row).map(Some),
            None => Ok(None),
        }
    })?;
    event.map(|e| e.fields().envelope_json()).transpose()
}

/// The notifications of every event of the transactions `txids` (as `xid8` text), in
/// `(txid, id)` order: byte for byte what `commit` mode queues for them. For the
/// coalesced worker, inside its SPI connection.
pub fn notifications_of(
    client: &mut pgrx::spi::SpiClient<'_>,
    txids: Vec<String>,
) -> TxResult<Vec<String>> {
    let table = crate::plans::execute(
        client,
        concat!(
            "SELECT ",
            stored_columns!(),
            " FROM txevents.outbox WHERE txid = ANY($1::text[]::xid8[]) ORDER BY txid, id"
        ),
        None,
        &[txids.into()],
    )?;
    let mut out = Vec::with_capacity(table.len());
    for row in table {
        out.push(StoredEvent::from_row(&row)?.fields().notification()?);
    }
    Ok(out)
}
