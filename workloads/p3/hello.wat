;; world: hello
;; hello (WASI 0.3): the smallest `wasi:http/handler@0.3.0` service we could write, and the
;; headline benchmark component. Every request is answered 200 with the body
;; `hello from p3\n`, written through a `stream<u8>`, no trailers, and the header
;; `x-instance-requests: N`, N being how many requests this instance has been asked to
;; handle so far, this one included: tests tell instance reuse from one instance per
;; request by it. A core module: `componentize --wit workloads/p3/wit --world hello`
;; (hack/build-wasm) makes it target/wasm/p3-hello.component.wasm.
;;
;; `handle` is lifted async with a callback. It answers at once (`task.return`), then
;; writes the body and the trailers future `ok(none)`; a write the host does not take at
;; once is waited for in a waitable set, and the task's state between callbacks is one
;; i32 in its context slot 0: set << 8 | bytes of the body left << 1 | trailers pending.
;; Requests of one instance run concurrently, so nothing a suspended task needs lives in a
;; global; the header scratch (below) is used only before the task first suspends.
(module
  (import "wasi:http/types@0.3.0" "[resource-drop]request" (func $request_drop (param i32)))
  (import "wasi:http/types@0.3.0" "[static]fields.from-list"
    (func $fields_from_list (param i32 i32 i32)))
  (import "wasi:http/types@0.3.0" "[static]response.new"
    (func $response_new (param i32 i32 i32 i32 i32)))
  ;; response.new's futures and streams, numbered as they occur in its type: 0 the body
  ;; `stream<u8>`, 1 the trailers future, 2 the future of the result of sending it.
  ;; `-new` gives the readable end in the low 32 bits and the writable end in the high.
  (import "wasi:http/types@0.3.0" "[stream-new-0][static]response.new"
    (func $body_new (result i64)))
  (import "wasi:http/types@0.3.0" "[async-lower][stream-write-0][static]response.new"
    (func $body_write (param i32 i32 i32) (result i32)))
  (import "wasi:http/types@0.3.0" "[stream-drop-writable-0][static]response.new"
    (func $body_drop (param i32)))
  (import "wasi:http/types@0.3.0" "[future-new-1][static]response.new"
    (func $trailers_new (result i64)))
  (import "wasi:http/types@0.3.0" "[async-lower][future-write-1][static]response.new"
    (func $trailers_write (param i32 i32) (result i32)))
  (import "wasi:http/types@0.3.0" "[future-drop-writable-1][static]response.new"
    (func $trailers_drop (param i32)))
  (import "wasi:http/types@0.3.0" "[future-drop-readable-2][static]response.new"
    (func $sent_drop (param i32)))
  (import "$root" "[waitable-set-new]" (func $set_new (result i32)))
  (import "$root" "[waitable-set-drop]" (func $set_drop (param i32)))
  (import "$root" "[waitable-join]" (func $join (param i32 i32)))
  (import "$root" "[context-get-0]" (func $context_get (result i32)))
  (import "$root" "[context-set-0]" (func $context_set (param i32)))
  ;; result<response, error-code> flattened: the case, then the joined payload slots.
  (import "[export]wasi:http/handler@0.3.0" "[task-return]handle"
    (func $task_return (param i32 i32 i32 i64 i32 i32 i32 i32)))

  ;; 0: response.new's results (response, result future); 16: from-list's result (case
  ;; at 16, fields at 20); 48: the header list, one (name ptr, len, value ptr, len); 64:
  ;; the trailers value `ok(none)`, all zeros; 80..90: the digits of N; 96: the header
  ;; name; 128..142: the body; 1024: what the host allocates (see cabi_realloc).
  (memory (export "memory") 1)
  (data (i32.const 48) "\60\00\00\00\13\00\00\00")
  (data (i32.const 96) "x-instance-requests")
  (data (i32.const 128) "hello from p3\n")
  (global $requests (mut i32) (i32.const 0))

  ;; Only a `header-error` string would be allocated, from-list's error, which traps
  ;; below anyway: one scratch area does.
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (i32.const 1024))

  (func (export "[async-lift]wasi:http/handler@0.3.0#handle") (param $request i32) (result i32)
    (local $n i32) (local $digit i32) (local $body i64) (local $trailers i64)
    (local $body_tx i32) (local $trailers_tx i32) (local $left i32) (local $pending i32)
    (local $set i32)
    (call $request_drop (local.get $request))
    (global.set $requests (local.tee $n (i32.add (global.get $requests) (i32.const 1))))
    (local.set $digit (i32.const 90))
    (loop $digits
      (local.set $digit (i32.sub (local.get $digit) (i32.const 1)))
      (i32.store8 (local.get $digit)
        (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (br_if $digits (local.tee $n (i32.div_u (local.get $n) (i32.const 10)))))
    (i32.store (i32.const 56) (local.get $digit))
    (i32.store (i32.const 60) (i32.sub (i32.const 90) (local.get $digit)))
    (call $fields_from_list (i32.const 48) (i32.const 1) (i32.const 16))
    (if (i32.load8_u (i32.const 16)) (then (unreachable)))
    (local.set $body (call $body_new))
    (local.set $trailers (call $trailers_new))
    (call $response_new (i32.load (i32.const 20))
      (i32.const 1) (i32.wrap_i64 (local.get $body))   ;; some(body)
      (i32.wrap_i64 (local.get $trailers)) (i32.const 0))
    (call $sent_drop (i32.load (i32.const 4)))
    (call $task_return (i32.const 0) (i32.load (i32.const 0))
      (i32.const 0) (i64.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
    (local.set $body_tx (i32.wrap_i64 (i64.shr_u (local.get $body) (i64.const 32))))
    (local.set $trailers_tx (i32.wrap_i64 (i64.shr_u (local.get $trailers) (i64.const 32))))
    (local.set $left (call $written (local.get $body_tx) (i32.const 14)
      (call $body_write (local.get $body_tx) (i32.const 128) (i32.const 14))))
    (local.set $pending
      (i32.eq (call $trailers_write (local.get $trailers_tx) (i32.const 64)) (i32.const -1)))
    (if (i32.eqz (local.get $pending)) (then (call $trailers_drop (local.get $trailers_tx))))
    (if (i32.eqz (i32.or (local.get $left) (local.get $pending)))
      (then (return (i32.const 0))))   ;; EXIT
    (local.set $set (call $set_new))
    (if (local.get $left) (then (call $join (local.get $body_tx) (local.get $set))))
    (if (local.get $pending) (then (call $join (local.get $trailers_tx) (local.get $set))))
    (call $wait (i32.or (i32.shl (local.get $set) (i32.const 8))
      (i32.or (i32.shl (local.get $left) (i32.const 1)) (local.get $pending)))))

  ;; Only write events come: a task is not told of cancellation after task.return.
  (func (export "[callback][async-lift]wasi:http/handler@0.3.0#handle")
        (param $event i32) (param $handle i32) (param $code i32) (result i32)
    (local $state i32)
    (local.set $state (call $context_get))
    (if (i32.eq (local.get $event) (i32.const 3))
      (then   ;; STREAM_WRITE: the body; keep the set and the trailers bit
        (local.set $state (i32.or (i32.and (local.get $state) (i32.const 0xffffff01))
          (i32.shl (call $written (local.get $handle)
              (i32.and (i32.shr_u (local.get $state) (i32.const 1)) (i32.const 127))
              (local.get $code))
            (i32.const 1)))))
      (else   ;; FUTURE_WRITE: the trailers
        (call $trailers_drop (local.get $handle))
        (local.set $state (i32.and (local.get $state) (i32.const -2)))))
    (if (i32.and (local.get $state) (i32.const 255))
      (then (return (call $wait (local.get $state)))))
    (call $set_drop (i32.shr_u (local.get $state) (i32.const 8)))
    (i32.const 0))

  ;; The body left to write after a write of its last $left bytes returned $code: `left`
  ;; while a write is pending; 0 once all is written or the reader is gone, the writable
  ;; end dropped then. A completed write may have taken only part: the rest is written.
  (func $written (param $tx i32) (param $left i32) (param $code i32) (result i32)
    (loop $more
      (if (i32.eq (local.get $code) (i32.const -1)) (then (return (local.get $left))))
      (local.set $left (i32.sub (local.get $left) (i32.shr_u (local.get $code) (i32.const 4))))
      (if (i32.eqz (i32.or (i32.eqz (local.get $left)) (i32.and (local.get $code) (i32.const 15))))
        (then
          (local.set $code (call $body_write (local.get $tx)
            (i32.sub (i32.const 142) (local.get $left)) (local.get $left)))
          (br $more))))
    (call $body_drop (local.get $tx))
    (i32.const 0))

  ;; Keeps the task's state and returns WAIT on its set.
  (func $wait (param $state i32) (result i32)
    (call $context_set (local.get $state))
    (i32.or (i32.shl (i32.shr_u (local.get $state) (i32.const 8)) (i32.const 4)) (i32.const 2))))
