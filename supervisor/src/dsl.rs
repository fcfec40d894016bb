//! The `supervisor!` DSL and the `const` checks that make its mistakes compile errors.

use std::time::Duration;

/// Parses a DSL duration (`250ms`, `5s`, `2m`, `1h`, `100us`; `_` separators allowed) at compile
/// time; anything else fails to compile.
pub const fn duration(text: &str) -> Duration {
    let bytes = text.as_bytes();
    let mut value: u64 = 0;
    let mut index = 0;
    let mut digits = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'_' {
            index += 1;
            continue;
        }
        if !byte.is_ascii_digit() {
            break;
        }
        value = match value.checked_mul(10) {
            Some(value) => value + (byte - b'0') as u64,
            None => panic!("supervisor!: duration out of range"),
        };
        digits += 1;
        index += 1;
    }
    if digits == 0 {
        panic!("supervisor!: a duration starts with a number, like 250ms or 5s");
    }
    let unit = bytes.len() - index;
    let (a, b) = (
        if unit > 0 { bytes[index] } else { 0 },
        if unit > 1 { bytes[index + 1] } else { 0 },
    );
    match (unit, a, b) {
        (2, b'u', b's') => Duration::from_micros(value),
        (2, b'm', b's') => Duration::from_millis(value),
        (1, b's', _) => Duration::from_secs(value),
        (1, b'm', _) => Duration::from_secs(value * 60),
        (1, b'h', _) => Duration::from_secs(value * 3600),
        _ => panic!("supervisor!: a duration ends with us, ms, s, m or h"),
    }
}

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut index = 0;
    while index < a.len() {
        if a[index] != b[index] {
            return false;
        }
        index += 1;
    }
    true
}

/// Fails to compile (when called in a `const`) if two sibling ids are equal.
pub const fn assert_unique_ids(ids: &[&str]) {
    let mut i = 0;
    while i < ids.len() {
        let mut j = i + 1;
        while j < ids.len() {
            if same(ids[i], ids[j]) {
                panic!("supervisor!: two children of one supervisor have the same id");
            }
            j += 1;
        }
        i += 1;
    }
}

/// Declares a supervision tree. Expands to [`SupervisorBuilder`](crate::SupervisorBuilder)
/// calls and evaluates to `Result<SupervisorSpec, Error>`.
///
/// ```text
/// supervisor! {
///     "id": STRATEGY [, intensity N per DURATION] [, auto_shutdown any_significant|all_significant] {
///         worker "id" => START_EXPR [, OPTION]* ;
///         entities "id" => ENTITIES.start() [, OPTION]* ;   (a runtime entity kind)
///         dynamic "id", max_children N [, intensity N per DURATION] [, OPTION]* ;
///         supervisor "id": STRATEGY [, intensity ...] [, auto_shutdown ...] { ... } [, OPTION]* [;]
///     }
/// }
/// STRATEGY = one_for_one | one_for_all | rest_for_one
/// OPTION   = permanent | transient | temporary | significant
///          | shutdown DURATION | brutal_kill | infinity | backoff DURATION..DURATION
/// DURATION = 250ms | 5s | 2m | 1h | 100us
/// ```
///
/// Sibling ids must differ, intensity periods must be positive and durations well formed; each
/// mistake is a compile error:
///
/// ```compile_fail
/// # use garrison_supervisor::{supervisor, Start};
/// # struct W; impl garrison_supervisor::Worker for W { type Message = (); type State = ();
/// #   async fn start(&self, _: &garrison_supervisor::WorkerContext<()>) -> Result<(), garrison_supervisor::HandlerError> { Ok(()) }
/// #   async fn handle(&self, _: &garrison_supervisor::WorkerContext<()>, _: (), _: &mut ()) -> Result<(), garrison_supervisor::HandlerError> { Ok(()) } }
/// let spec = supervisor! {
///     "node": one_for_one {
///         worker "a" => Start::worker(|| W), permanent;
///         worker "a" => Start::worker(|| W), permanent;
///     }
/// };
/// ```
#[macro_export]
macro_rules! supervisor {
    ($id:literal : $strategy:ident
        $(, intensity $max:literal per $period:literal)?
        $(, auto_shutdown $auto:ident)?
        { $($body:tt)* }
    ) => {
        // A closure so that nested `build()?` calls return from the macro's expression, not
        // from the function the macro is used in.
        (|| -> ::core::result::Result<$crate::SupervisorSpec, $crate::Error> {
            $crate::supervisor!(@node $id : $strategy $(, intensity $max per $period)? $(, auto_shutdown $auto)? { $($body)* })
                .build()
        })()
    };

    // A supervisor node: evaluates to its builder.
    (@node $id:literal : $strategy:ident
        $(, intensity $max:literal per $period:literal)?
        $(, auto_shutdown $auto:ident)?
        { $($body:tt)* }
    ) => {
        $crate::supervisor!(@items
            ($crate::SupervisorBuilder::new($id)
                .strategy($crate::supervisor!(@strategy $strategy))
                $(.intensity($max, $crate::supervisor!(@period $period)))?
                $(.auto_shutdown($crate::supervisor!(@auto $auto)))?)
            [] ; $($body)*)
    };

    (@items ($builder:expr) [$($ids:literal),*] ; ) => {{
        const _: () = $crate::__private::assert_unique_ids(&[$($ids),*]);
        $builder
    }};
    (@items ($builder:expr) [$($ids:literal),*] ;
        worker $id:literal => $start:expr $(, $opt:ident $($arg:literal)? $(.. $arg2:literal)?)* ; $($rest:tt)*
    ) => {
        $crate::supervisor!(@items
            ($builder.child($crate::supervisor!(@opts $crate::ChildSpec::new($id, $start) ; $($opt $($arg)? $(.. $arg2)? ,)*)))
            [$($ids,)* $id] ; $($rest)*)
    };
    (@items ($builder:expr) [$($ids:literal),*] ;
        entities $id:literal => $start:expr $(, $opt:ident $($arg:literal)? $(.. $arg2:literal)?)* ; $($rest:tt)*
    ) => {
        $crate::supervisor!(@items ($builder) [$($ids),*] ;
            worker $id => $start $(, $opt $($arg)? $(.. $arg2)?)* ; $($rest)*)
    };
    (@items ($builder:expr) [$($ids:literal),*] ;
        dynamic $id:literal, max_children $max_children:literal
        $(, intensity $max:literal per $period:literal)?
        $(, $opt:ident $($arg:literal)? $(.. $arg2:literal)?)* ; $($rest:tt)*
    ) => {
        $crate::supervisor!(@items
            ($builder.child($crate::supervisor!(@opts
                $crate::ChildSpec::new($id, $crate::Start::supervisor(
                    $crate::SupervisorBuilder::dynamic($id, $max_children)
                        $(.intensity($max, $crate::supervisor!(@period $period)))?
                        .build()?))
                ; $($opt $($arg)? $(.. $arg2)? ,)*)))
            [$($ids,)* $id] ; $($rest)*)
    };
    (@items ($builder:expr) [$($ids:literal),*] ;
        supervisor $id:literal : $strategy:ident
        $(, intensity $max:literal per $period:literal)?
        $(, auto_shutdown $auto:ident)?
        { $($body:tt)* }
        $(, $opt:ident $($arg:literal)? $(.. $arg2:literal)?)* $(;)? $($rest:tt)*
    ) => {
        $crate::supervisor!(@items
            ($builder.child($crate::supervisor!(@opts
                $crate::ChildSpec::new($id, $crate::Start::supervisor(
                    $crate::supervisor!(@node $id : $strategy $(, intensity $max per $period)? $(, auto_shutdown $auto)? { $($body)* })
                        .build()?))
                ; $($opt $($arg)? $(.. $arg2)? ,)*)))
            [$($ids,)* $id] ; $($rest)*)
    };

    // Child options, applied left to right.
    (@opts $spec:expr ; ) => { $spec };
    (@opts $spec:expr ; permanent, $($rest:tt)*) => { $crate::supervisor!(@opts $spec.restart($crate::Restart::Permanent) ; $($rest)*) };
    (@opts $spec:expr ; transient, $($rest:tt)*) => { $crate::supervisor!(@opts $spec.restart($crate::Restart::Transient) ; $($rest)*) };
    (@opts $spec:expr ; temporary, $($rest:tt)*) => { $crate::supervisor!(@opts $spec.restart($crate::Restart::Temporary) ; $($rest)*) };
    (@opts $spec:expr ; significant, $($rest:tt)*) => { $crate::supervisor!(@opts $spec.significant(true) ; $($rest)*) };
    (@opts $spec:expr ; brutal_kill, $($rest:tt)*) => { $crate::supervisor!(@opts $spec.shutdown($crate::Shutdown::BrutalKill) ; $($rest)*) };
    (@opts $spec:expr ; infinity, $($rest:tt)*) => { $crate::supervisor!(@opts $spec.shutdown($crate::Shutdown::Infinity) ; $($rest)*) };
    (@opts $spec:expr ; shutdown $limit:literal, $($rest:tt)*) => {
        $crate::supervisor!(@opts $spec.shutdown($crate::Shutdown::Timeout($crate::supervisor!(@duration $limit))) ; $($rest)*)
    };
    (@opts $spec:expr ; backoff $min:literal .. $max:literal, $($rest:tt)*) => {
        $crate::supervisor!(@opts $spec.backoff($crate::Backoff::new(
            $crate::supervisor!(@duration $min), $crate::supervisor!(@duration $max))) ; $($rest)*)
    };

    (@strategy one_for_one) => { $crate::Strategy::OneForOne };
    (@strategy one_for_all) => { $crate::Strategy::OneForAll };
    (@strategy rest_for_one) => { $crate::Strategy::RestForOne };
    (@auto any_significant) => { $crate::AutoShutdown::AnySignificant };
    (@auto all_significant) => { $crate::AutoShutdown::AllSignificant };
    (@auto never) => { $crate::AutoShutdown::Never };
    (@duration $text:literal) => {{
        const DURATION: ::std::time::Duration = $crate::__private::duration(stringify!($text));
        DURATION
    }};
    (@period $text:literal) => {{
        const PERIOD: ::std::time::Duration = $crate::__private::duration(stringify!($text));
        const _: () = assert!(!PERIOD.is_zero(), "supervisor!: an intensity period must be positive");
        PERIOD
    }};
}
