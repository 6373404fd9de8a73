//! `txevents.emit`, `invalidate`, `invalidate_namespace` and `get`: write an event into
//! the outbox and queue its NOTIFY; read one back as an envelope.

use cachetx_shared::{
    notify::encode_for_envelope, validate_prefix, CacheInvalidation, Envelope, InvalidationScope,
    Timestamp, FORMAT_VERSION, INVALIDATE_EVENT_TYPE,
};
use pgrx::prelude::*;
use pgrx::JsonB;

use crate::error::{TxEventsError, TxResult};
use crate::guc::{self, NotifyMode};
use crate::jsonb::RawJsonb;
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
            // The slow path, only to name what was passed instead.
            Some(Json::Raw(raw)) => {
                validate::object(field, Some(raw.to_value())).map(|m| CheckedObject {
                    json: Json::Value(serde_json::Value::Object(m)),
                })
            }
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

    /// The object as serde, for the envelope.
    fn into_map(self) -> serde_json::Map<String, serde_json::Value> {
        let value = match self.json {
            Json::Raw(raw) => raw.to_value(),
            Json::Value(v) => v,
        };
        match value {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
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
        NotifyMode::Commit => Some(notify::check_channel(&guc::channel()?)?),
        NotifyMode::Off => None,
    };

    // SAFETY: plain function returning the current time.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let (id, txid) = outbox::insert(outbox::Row {
        event_type,
        aggregate_type: event.aggregate_type,
        aggregate_id: event.aggregate_id,
        payload: payload.datum()?,
        headers: headers.datum()?,
        occurred_at: now,
    })?;
    if let Some(channel) = channel {
        let envelope = Envelope {
            v: FORMAT_VERSION,
            id,
            event_type: event_type.to_string(),
            aggregate_type: event.aggregate_type.map(str::to_string),
            aggregate_id: event.aggregate_id.map(str::to_string),
            payload: payload.into_map(),
            headers: headers.into_map(),
            occurred_at: Timestamp::from_postgres_micros(now),
            txid: Some(txid),
        };
        notify::queue(channel, encode_for_envelope(&envelope))?;
    }
    Ok(id)
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

/// The event `id` as its envelope (the same JSON as an inline notification carries),
/// or NULL if there is no such event (never emitted, rolled back, or pruned).
#[pg_extern(name = "get", security_definer, strict, stable)]
#[search_path(@extschema@, pg_catalog, pg_temp)]
fn txevents_get(id: i64) -> Option<JsonB> {
    match envelope(id) {
        Ok(found) => found.map(|e| JsonB(serde_json::to_value(&e).unwrap_or_default())),
        Err(e) => e.raise(),
    }
}

fn envelope(id: i64) -> TxResult<Option<Envelope>> {
    Spi::connect(|client| {
        let table = client.select(
            "SELECT event_type, aggregate_type, aggregate_id, payload, headers,
                    occurred_at, txid::text
               FROM txevents.outbox WHERE id = $1",
            Some(1),
            &[id.into()],
        )?;
        let Some(row) = table.into_iter().next() else {
            return Ok(None);
        };
        let event_type: String = row.get(1)?.unwrap_or_default();
        let payload: Option<JsonB> = row.get(4)?;
        let headers: Option<JsonB> = row.get(5)?;
        let occurred_at: Option<TimestampWithTimeZone> = row.get(6)?;
        let txid: Option<String> = row.get(7)?;
        let object = |j: Option<JsonB>| match j.map(|j| j.0) {
            Some(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        let micros = occurred_at.map(|t| t.into_inner()).unwrap_or_default();
        Ok(Some(Envelope {
            v: FORMAT_VERSION,
            id,
            event_type,
            aggregate_type: row.get(2)?,
            aggregate_id: row.get(3)?,
            payload: object(payload),
            headers: object(headers),
            occurred_at: Timestamp::from_postgres_micros(micros),
            txid: txid.and_then(|t| t.parse().ok()),
        }))
    })
}
