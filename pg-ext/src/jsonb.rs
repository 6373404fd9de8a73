//! `RawJsonb`: a `jsonb` value kept as the Postgres datum.
//!
//! pgrx's `JsonB` turns every value into text and then into a `serde_json::Value`, and
//! back. `emit` only needs to know that an argument is an object and to store it as it
//! came; the NOTIFY payload and `get` splice the jsonb's own text into the envelope,
//! never a serde round trip (which would change numbers beyond an `f64` or `u64`).
//! `poll` returns the stored payloads as they are.

use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::datum::Datum;
use pgrx::nullable::Nullable;
use std::ffi::CString;

use pgrx::{pg_sys, FromDatum, IntoDatum};

use crate::error::{TxEventsError, TxResult};

/// `JsonbContainer.header` flag of an object root (utils/jsonb.h).
const JB_FOBJECT: u32 = 0x2000_0000;

/// A non-null `jsonb` datum, detoasted on first use.
pub struct RawJsonb(pg_sys::Datum);

impl FromDatum for RawJsonb {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<Self> {
        if is_null || datum.is_null() {
            None
        } else {
            Some(RawJsonb(datum))
        }
    }
}

// SAFETY: unboxes through FromDatum exactly as pgrx's own types do.
unsafe impl<'fcx> ArgAbi<'fcx> for RawJsonb {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        // SAFETY: the caller guarantees a jsonb argument.
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| panic!("argument {index} must not be null"))
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        // SAFETY: as above.
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

impl IntoDatum for RawJsonb {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

// SAFETY: returns the datum as is, like pgrx's own IntoDatum types.
unsafe impl BoxRet for RawJsonb {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        // SAFETY: a jsonb datum for a function declared to return jsonb.
        unsafe { fcinfo.return_raw_datum(self.0) }
    }
}

pgrx::impl_sql_translatable!(RawJsonb, "jsonb");

impl RawJsonb {
    /// Copies the value, detoasted, out of SPI's memory into the memory of the function
    /// call that opened the SPI connection, so it outlives `SPI_finish` (and never is a
    /// pointer into the TOAST table).
    pub fn transfer_out_of_spi(self) -> RawJsonb {
        let plain = self.detoasted();
        // SAFETY: jsonb is a varlena (by reference, length -1); SPI is connected.
        RawJsonb(unsafe { pg_sys::SPI_datumTransfer(plain, false, -1) })
    }

    /// The value as a plain (detoasted, 4-byte header) varlena datum.
    pub fn detoasted(&self) -> pg_sys::Datum {
        // SAFETY: a jsonb datum points to a varlena; detoasting returns it as is
        // when it is already plain, or a palloc'd copy.
        unsafe { pg_sys::Datum::from(pg_sys::pg_detoast_datum(self.0.cast_mut_ptr())) }
    }

    /// Whether the root of the value is an object.
    pub fn is_object(&self) -> bool {
        let datum = self.detoasted();
        // SAFETY: a plain jsonb varlena is a 4-byte length word followed by the root
        // JsonbContainer, whose first field is the u32 header.
        let header = unsafe {
            datum
                .cast_mut_ptr::<u8>()
                .add(pg_sys::VARHDRSZ)
                .cast::<u32>()
                .read_unaligned()
        };
        header & JB_FOBJECT != 0
    }

    /// The JSON kind of the root, as `jsonb_typeof` names it (`object`, `array`,
    /// `string`, `number`, `boolean`, `null`).
    pub fn kind(&self) -> String {
        // SAFETY: jsonb_typeof of a valid jsonb datum returns a text datum.
        let kind = unsafe {
            pgrx::direct_function_call::<String>(pg_sys::jsonb_typeof, &[Some(self.detoasted())])
        };
        // jsonb_typeof never returns NULL for a value; an empty name reads as
        // "an unknown JSON kind" in the message this is only used for.
        kind.unwrap_or_default()
    }
}

/// The text Postgres writes for the jsonb `datum` (`jsonb_out`, the same text as
/// `payload::text`): numbers exactly as stored, whatever their size or precision.
pub fn text_of(datum: pg_sys::Datum) -> TxResult<String> {
    // SAFETY: `datum` is a non-null jsonb; jsonb_out detoasts it and returns a palloc'd
    // C string.
    let text = unsafe {
        pgrx::direct_function_call::<&core::ffi::CStr>(pg_sys::jsonb_out, &[Some(datum)])
    };
    let text = text.ok_or_else(|| TxEventsError::Internal("jsonb_out returned NULL".into()))?;
    text.to_str()
        .map(str::to_string)
        .map_err(|_| TxEventsError::Internal("jsonb text is not UTF-8".into()))
}

/// Parses JSON text into a jsonb datum with Postgres's own parser (`jsonb_in`), which
/// keeps every number as a `numeric`.
pub fn from_text(text: String) -> TxResult<RawJsonb> {
    let text = CString::new(text)
        .map_err(|_| TxEventsError::Internal("JSON text holds a NUL byte".into()))?;
    // SAFETY: jsonb_in takes a C string valid for the call and returns a palloc'd jsonb
    // (a malformed text raises a Postgres ERROR, which pgrx re-raises).
    let datum = unsafe {
        pgrx::direct_function_call_as_datum(
            pg_sys::jsonb_in,
            &[Some(pg_sys::Datum::from(text.as_ptr()))],
        )
    };
    datum
        .map(RawJsonb)
        .ok_or_else(|| TxEventsError::Internal("jsonb_in returned NULL".into()))
}
