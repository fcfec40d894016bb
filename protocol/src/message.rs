//! Message declaration: stable kind ids, the `Message` trait, validated messages and protocols.

use std::{fmt, marker::PhantomData, ops::Deref};

use rkyv::{
    Archive, Deserialize, Portable, Serialize, bytecheck::CheckBytes, de::Pool, rancor::Strategy,
};

use crate::{
    DecodeConfig, Error, Frame, MessageKind,
    archive::{RkyvError, WireSerializer},
    schema::{MessageSchema, Registry, Schema},
    strict::{self, StrictValidator},
};

/// A type that travels in frames under a stable kind id.
///
/// Implemented by [`messages!`](crate::messages), which also checks that ids are unique; a type
/// implements it at most once, so it has exactly one kind id.
pub trait Message:
    Archive<Archived: Portable + for<'a> CheckBytes<StrictValidator<'a, RkyvError>>>
    + for<'a> Serialize<WireSerializer<'a>>
    + Schema
    + Send
    + 'static
{
    /// The stable kind id.
    const KIND: MessageKind;
    /// The message's name, used in errors and as the `game.event.type` trace attribute.
    const NAME: &'static str;
}

impl DecodeConfig {
    /// The default limits, accepting only the kinds protocol `P` declares.
    pub fn for_protocol<P: Protocol>() -> Self {
        DecodeConfig {
            known_kind: P::knows,
            ..DecodeConfig::default()
        }
    }
}

/// Validates `payload` as an archive of `M` that covers every byte of it (see `strict`),
/// borrowing it.
#[inline]
pub(crate) fn access<M: Message>(payload: &[u8], kind: MessageKind) -> Result<&M::Archived, Error> {
    let root = rkyv::api::root_position::<M::Archived>(payload.len());
    rkyv::api::access_pos_with_context::<M::Archived, _, RkyvError>(
        payload,
        root,
        &mut strict::validator(payload),
    )
    .map_err(|reason| Error::InvalidArchive {
        kind,
        message: M::NAME,
        reason,
    })
}

impl Frame {
    /// Validates this frame's payload as an `M` in place and borrows the archived message.
    ///
    /// Use [`Frame::validate`] to keep the result; this form suits a caller that reads the
    /// message once while it holds the frame.
    ///
    /// # Errors
    /// [`Error::KindMismatch`] when the frame carries another kind; [`Error::InvalidArchive`]
    /// with bytecheck's reason when the payload is not a valid `M`.
    pub fn access<M: Message>(&self) -> Result<&M::Archived, Error> {
        if self.kind() != M::KIND {
            return Err(Error::KindMismatch {
                expected: M::KIND,
                expected_name: M::NAME,
                found: self.kind(),
            });
        }
        access::<M>(self.payload(), M::KIND)
    }

    /// Validates this frame's payload as an `M`, once, and keeps the frame's bytes.
    ///
    /// # Errors
    /// As [`Frame::access`].
    #[inline]
    pub fn validate<M: Message>(self) -> Result<Validated<M>, Error> {
        self.access::<M>()?;
        Ok(Validated {
            frame: self,
            message: PhantomData,
        })
    }
}

/// A frame whose payload was validated as an `M`: it dereferences to `M`'s archived form, read in
/// place from the frame's own bytes, with no further check and no copy.
///
/// It owns those bytes, so it can be moved into an actor message and read on another thread.
pub struct Validated<M: Message> {
    frame: Frame,
    // `fn() -> M` keeps `Validated` `Send + Sync` whatever `M` is: only bytes are held.
    message: PhantomData<fn() -> M>,
}

impl<M: Message> Validated<M> {
    /// The frame the message arrived in (header, sequence number, trace context, wire bytes).
    #[inline]
    pub fn frame(&self) -> &Frame {
        &self.frame
    }

    /// Gives the frame back, for forwarding its bytes unchanged.
    pub fn into_frame(self) -> Frame {
        self.frame
    }

    /// Deserializes an owned `M`: a copy, for the rare handler that must keep the message.
    ///
    /// # Errors
    /// Whatever `M`'s `Deserialize` impl reports (none for plain data).
    pub fn deserialize(&self) -> Result<M, Error>
    where
        M::Archived: Deserialize<M, Strategy<Pool, RkyvError>>,
    {
        rkyv::deserialize::<M, RkyvError>(&**self).map_err(|reason| Error::InvalidArchive {
            kind: M::KIND,
            message: M::NAME,
            reason,
        })
    }
}

impl<M: Message> Deref for Validated<M> {
    type Target = M::Archived;

    #[inline]
    fn deref(&self) -> &M::Archived {
        // SAFETY: a `Validated` is only built by `Frame::validate`, after `access` checked these
        // exact bytes as an `M::Archived` at the default root position; `Bytes` is immutable, so
        // they are still valid.
        unsafe { rkyv::access_unchecked::<M::Archived>(self.frame.payload()) }
    }
}

impl<M: Message> Clone for Validated<M> {
    fn clone(&self) -> Self {
        Validated {
            frame: self.frame.clone(),
            message: PhantomData,
        }
    }
}

impl<M: Message> fmt::Debug for Validated<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validated")
            .field("message", &M::NAME)
            .field("frame", &self.frame)
            .finish()
    }
}

/// A closed set of messages a peer may send, declared with [`messages!`](crate::messages): the
/// enum it generates has one variant per message, each holding a [`Validated`] message.
pub trait Protocol: Sized + Send + 'static {
    /// The protocol's name (the enum's).
    const NAME: &'static str;

    /// Every declared kind id with its message name, in declaration order.
    const KINDS: &'static [(MessageKind, &'static str)];

    /// Validates a frame as whichever message its kind declares.
    ///
    /// # Errors
    /// [`Error::UnknownKind`] for an undeclared kind; [`Error::InvalidArchive`] for a payload
    /// that is not a valid archive of the declared message.
    fn validate(frame: Frame) -> Result<Self, Error>;

    /// The frame this message arrived in.
    fn frame(&self) -> &Frame;

    /// Describes every message's archived layout, defining the types they use in `registry`
    /// (see [`schema`](crate::schema)).
    fn describe(registry: &mut Registry) -> Vec<MessageSchema>;

    /// The name declared for `kind`, if any.
    fn name_of(kind: MessageKind) -> Option<&'static str> {
        Self::KINDS
            .iter()
            .find(|(known, _)| *known == kind)
            .map(|(_, name)| *name)
    }

    /// Whether `kind` is declared.
    fn knows(kind: MessageKind) -> bool {
        Self::name_of(kind).is_some()
    }
}

#[doc(hidden)]
pub mod __private {
    /// Panics (at compile time, when called in a `const`) if `ids` holds a duplicate.
    pub const fn assert_unique_kinds(ids: &[u16]) {
        let mut i = 0;
        while i < ids.len() {
            let mut j = i + 1;
            while j < ids.len() {
                if ids[i] == ids[j] {
                    panic!("messages!: two messages declare the same kind id");
                }
                j += 1;
            }
            i += 1;
        }
    }
}

/// Declares a protocol: a set of message types with stable kind ids.
///
/// ```
/// use garrison_protocol::{messages, Protocol, MessageKind, Schema};
///
/// #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Schema)]
/// pub struct Hello { pub name: String }
/// #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Schema)]
/// pub struct Move { pub dx: i32, pub dy: i32 }
///
/// messages! {
///     /// What a client may send.
///     pub enum ClientMessage {
///         0x0001 => Hello(Hello),
///         0x0002 => Move(Move),
///     }
/// }
///
/// assert_eq!(ClientMessage::name_of(MessageKind(2)), Some("Move"));
/// ```
///
/// It implements [`Message`] for each type and [`Protocol`] for the enum, whose variants hold
/// [`Validated`] messages so a handler dispatches with a `match`. Each type derives
/// [`Schema`](crate::Schema) beside rkyv's traits, so the protocol's layout can be exported for
/// clients in other languages ([`schema`](crate::schema)). Two messages with the same id fail to
/// compile:
///
/// ```compile_fail
/// # use garrison_protocol::messages;
/// # #[derive(rkyv::Archive, rkyv::Serialize, garrison_protocol::Schema)] pub struct A;
/// # #[derive(rkyv::Archive, rkyv::Serialize, garrison_protocol::Schema)] pub struct B;
/// messages! { pub enum Clash { 7 => A(A), 7 => B(B) } }
/// ```
#[macro_export]
macro_rules! messages {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$variant_meta:meta])* $kind:literal => $variant:ident($ty:ty) ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        $vis enum $name {
            $(
                #[doc = concat!("A validated `", stringify!($ty), "`, kind ", stringify!($kind), ".")]
                $(#[$variant_meta])*
                $variant($crate::Validated<$ty>),
            )+
        }

        const _: () = $crate::__private::assert_unique_kinds(&[$($kind),+]);

        $(
            impl $crate::Message for $ty {
                const KIND: $crate::MessageKind = $crate::MessageKind($kind);
                const NAME: &'static str = stringify!($variant);
            }
        )+

        impl $crate::Protocol for $name {
            const NAME: &'static str = stringify!($name);

            const KINDS: &'static [($crate::MessageKind, &'static str)] =
                &[$( ($crate::MessageKind($kind), stringify!($variant)) ),+];

            #[allow(unreachable_patterns)]
            fn validate(frame: $crate::Frame) -> ::core::result::Result<Self, $crate::Error> {
                match frame.kind().0 {
                    $( $kind => frame.validate::<$ty>().map($name::$variant), )+
                    _ => ::core::result::Result::Err($crate::Error::UnknownKind { kind: frame.kind() }),
                }
            }

            fn frame(&self) -> &$crate::Frame {
                match self {
                    $( $name::$variant(message) => message.frame(), )+
                }
            }

            fn describe(
                registry: &mut $crate::schema::Registry,
            ) -> ::std::vec::Vec<$crate::schema::MessageSchema> {
                ::std::vec![$(
                    $crate::schema::MessageSchema {
                        kind: $crate::MessageKind($kind),
                        name: stringify!($variant),
                        ty: <$ty as $crate::schema::Schema>::schema_type(registry),
                    },
                )+]
            }
        }
    };
}
