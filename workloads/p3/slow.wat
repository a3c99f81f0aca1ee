;; world: slow
;; slow (WASI 0.3): a `wasi:http/handler@0.3.0` service whose answer depends on the
;; request's path, for the tests of instance reuse, time limits, memory and trailers.
;; Every answer carries `x-instance-requests: N` as hello.wat's does.
;;   /sleep/<ms>  waits <ms> milliseconds (`wasi:clocks/monotonic-clock@0.3.0#wait-for`,
;;                lowered async, so the instance's other requests run meanwhile), then
;;                answers 200 `slept\n`;
;;   /spin        loops for ever (a busy guest, for epoch preemption);
;;   /grow/<mib>  grows the memory by <mib> MiB: 200 `grown\n`, or 500 `no memory\n`
;;                when the growth is refused;
;;   /trap        traps (`unreachable`);
;;   /trailers    answers 200 `with trailers\n` with the header `trailer: x-done` and
;;                the trailers `x-done: 1`;
;;   anything else: 200 `hello from p3\n`.
;; <ms> and <mib> are the digits after the prefix, up to the first other byte, capped at
;; 16777215. A core module: `componentize --wit workloads/p3/wit --world slow`
;; (hack/build-wasm) makes it target/wasm/p3-slow.component.wasm.
;;
;; `handle` is lifted async with a callback, as in hello.wat; here each task keeps its
;; state in a record (below) whose address is its context slot 0. Records are reused
;; through a free list, so the memory they take is bounded by the most requests the
;; instance has had open at once.
(module
  (import "wasi:http/types@0.3.0" "[resource-drop]request" (func $request_drop (param i32)))
  (import "wasi:http/types@0.3.0" "[method]request.get-path-with-query"
    (func $get_path (param i32 i32)))
  (import "wasi:http/types@0.3.0" "[resource-drop]fields" (func $fields_drop (param i32)))
  (import "wasi:http/types@0.3.0" "[static]fields.from-list"
    (func $fields_from_list (param i32 i32 i32)))
  (import "wasi:http/types@0.3.0" "[static]response.new"
    (func $response_new (param i32 i32 i32 i32 i32)))
  (import "wasi:http/types@0.3.0" "[method]response.set-status-code"
    (func $set_status (param i32 i32) (result i32)))
  ;; response.new's futures and streams: 0 the body, 1 the trailers, 2 the result of
  ;; sending it (see hello.wat).
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
  ;; An async func lowered async: the duration in, a subtask status out (the state in
  ;; the low 4 bits, 2 = returned; otherwise the subtask's handle above them).
  (import "wasi:clocks/monotonic-clock@0.3.0" "[async-lower]wait-for"
    (func $wait_for (param i64) (result i32)))
  (import "$root" "[subtask-drop]" (func $subtask_drop (param i32)))
  (import "$root" "[waitable-set-new]" (func $set_new (result i32)))
  (import "$root" "[waitable-join]" (func $join (param i32 i32)))
  (import "$root" "[context-get-0]" (func $context_get (result i32)))
  (import "$root" "[context-set-0]" (func $context_set (param i32)))
  (import "[export]wasi:http/handler@0.3.0" "[task-return]handle"
    (func $task_return (param i32 i32 i32 i64 i32 i32 i32 i32)))

  ;; Memory: 0 response.new's results (response, result future); 16 the path's
  ;; option<string> (case, ptr, len); 32 from-list's result (case at 32, fields at 36);
  ;; 64 three header entries (name ptr, len, value ptr, len): x-instance-requests (its
  ;; value written per answer), trailer: x-done, and at 96 the trailer x-done: 1;
  ;; 112..122 the digits of N; 128.. the strings; 1024.. the heap (records, and the path
  ;; for the time of one `handle`).
  (memory (export "memory") 1)
  (data (i32.const 64) "\80\00\00\00\13\00\00\00\00\00\00\00\00\00\00\00")
  (data (i32.const 80) "\93\00\00\00\07\00\00\00\9a\00\00\00\06\00\00\00")
  (data (i32.const 96) "\9a\00\00\00\06\00\00\00\a0\00\00\00\01\00\00\00")
  (data (i32.const 128) "x-instance-requests")   ;; 128, 19 bytes
  (data (i32.const 147) "trailer")               ;; 147, 7
  (data (i32.const 154) "x-done")                ;; 154, 6
  (data (i32.const 160) "1")                     ;; 160, 1
  (data (i32.const 176) "hello from p3\n")       ;; 176, 14
  (data (i32.const 192) "slept\n")               ;; 192, 6
  (data (i32.const 200) "grown\n")               ;; 200, 6
  (data (i32.const 208) "no memory\n")           ;; 208, 10
  (data (i32.const 224) "with trailers\n")       ;; 224, 14
  (data (i32.const 240) "/sleep/")               ;; 240, 7
  (data (i32.const 248) "/spin")                 ;; 248, 5
  (data (i32.const 256) "/grow/")                ;; 256, 6
  (data (i32.const 264) "/trap")                 ;; 264, 5
  (data (i32.const 272) "/trailers")             ;; 272, 9
  (global $requests (mut i32) (i32.const 0))
  (global $heap (mut i32) (i32.const 1024))
  ;; The first free record (0: none); a free record's first word links the next.
  (global $free (mut i32) (i32.const 0))

  ;; A task's record, 48 bytes: +0 its trailers value, result<option<trailers>,
  ;; error-code> (case at +0, option case at +8, fields at +12); +16 its waitable set,
  ;; made with the record and kept with it; +20 the end of its body; +24 the body's bytes
  ;; left to write; +28 1 while its trailers write is pending; +32 its N.
  (func $record (result i32)
    (local $record i32)
    (if (local.tee $record (global.get $free))
      (then (global.set $free (i32.load (local.get $record))) (return (local.get $record))))
    (local.set $record (call $alloc (i32.const 8) (i32.const 48)))
    (i32.store offset=16 (local.get $record) (call $set_new))
    (local.get $record))

  ;; Bump allocation, growing the memory as needed; a refused growth traps.
  (func $alloc (param $align i32) (param $size i32) (result i32)
    (local $at i32) (local $pages i32)
    (local.set $at (i32.and
      (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
      (i32.sub (i32.const 0) (local.get $align))))
    (global.set $heap (i32.add (local.get $at) (local.get $size)))
    (local.set $pages (i32.sub
      (i32.shr_u (i32.add (global.get $heap) (i32.const 0xffff)) (i32.const 16))
      (memory.size)))
    (if (i32.gt_s (local.get $pages) (i32.const 0))
      (then (if (i32.eq (memory.grow (local.get $pages)) (i32.const -1)) (then (unreachable)))))
    (local.get $at))

  ;; The host allocates the path (and would a header-error's string, which traps below).
  (func (export "cabi_realloc") (param i32 i32) (param $align i32) (param $size i32) (result i32)
    (call $alloc (local.get $align) (local.get $size)))

  (func (export "[async-lift]wasi:http/handler@0.3.0#handle") (param $request i32) (result i32)
    (local $n i32) (local $heap i32) (local $path i32) (local $len i32) (local $what i32)
    (local $arg i32) (local $record i32) (local $status i32)
    (global.set $requests (local.tee $n (i32.add (global.get $requests) (i32.const 1))))
    (local.set $heap (global.get $heap))
    (call $get_path (local.get $request) (i32.const 16))
    (call $request_drop (local.get $request))
    (if (i32.load8_u (i32.const 16))
      (then
        (local.set $path (i32.load (i32.const 20)))
        (local.set $len (i32.load (i32.const 24)))))
    (if (i32.and (i32.eq (local.get $len) (i32.const 5))
          (call $starts (local.get $path) (local.get $len) (i32.const 248) (i32.const 5)))
      (then (loop $spin (br $spin))))
    (if (i32.and (i32.eq (local.get $len) (i32.const 5))
          (call $starts (local.get $path) (local.get $len) (i32.const 264) (i32.const 5)))
      (then (unreachable)))
    ;; $what: 0 hello, 1 sleep, 2 grow, 3 trailers.
    (if (call $starts (local.get $path) (local.get $len) (i32.const 240) (i32.const 7))
      (then
        (local.set $what (i32.const 1))
        (local.set $arg (call $number (i32.add (local.get $path) (i32.const 7))
          (i32.add (local.get $path) (local.get $len))))))
    (if (call $starts (local.get $path) (local.get $len) (i32.const 256) (i32.const 6))
      (then
        (local.set $what (i32.const 2))
        (local.set $arg (call $number (i32.add (local.get $path) (i32.const 6))
          (i32.add (local.get $path) (local.get $len))))))
    (if (i32.and (i32.eq (local.get $len) (i32.const 9))
          (call $starts (local.get $path) (local.get $len) (i32.const 272) (i32.const 9)))
      (then (local.set $what (i32.const 3))))
    ;; The path is read: give its bytes back.
    (global.set $heap (local.get $heap))
    (local.set $record (call $record))
    (i32.store offset=32 (local.get $record) (local.get $n))
    (if (i32.eq (local.get $what) (i32.const 1))
      (then
        (local.set $status (call $wait_for
          (i64.mul (i64.extend_i32_u (local.get $arg)) (i64.const 1000000))))
        (if (i32.eq (i32.and (local.get $status) (i32.const 15)) (i32.const 2))
          (then (return (call $respond (local.get $record) (i32.const 200)
            (i32.const 192) (i32.const 6) (i32.const 0)))))
        (call $join (i32.shr_u (local.get $status) (i32.const 4))
          (i32.load offset=16 (local.get $record)))
        (return (call $wait (local.get $record)))))
    (if (i32.eq (local.get $what) (i32.const 2))
      (then
        (if (i32.eq (memory.grow (i32.shl (local.get $arg) (i32.const 4))) (i32.const -1))
          (then (return (call $respond (local.get $record) (i32.const 500)
            (i32.const 208) (i32.const 10) (i32.const 0)))))
        (return (call $respond (local.get $record) (i32.const 200)
          (i32.const 200) (i32.const 6) (i32.const 0)))))
    (if (i32.eq (local.get $what) (i32.const 3))
      (then (return (call $respond (local.get $record) (i32.const 200)
        (i32.const 224) (i32.const 14) (i32.const 1)))))
    (call $respond (local.get $record) (i32.const 200) (i32.const 176) (i32.const 14) (i32.const 0)))

  ;; A task is not told of cancellation after task.return, and wasmtime-wasi-http 48.0.8
  ;; never cancels a served task before it (its handler.rs leaves that as a TODO), so any
  ;; other event is unexpected here: it traps.
  (func (export "[callback][async-lift]wasi:http/handler@0.3.0#handle")
        (param $event i32) (param $handle i32) (param $code i32) (result i32)
    (local $record i32)
    (local.set $record (call $context_get))
    (if (i32.eq (local.get $event) (i32.const 1))
      (then   ;; SUBTASK: the sleep's wait-for
        (if (i32.ne (local.get $code) (i32.const 2))
          (then (return (call $wait (local.get $record)))))
        (call $subtask_drop (local.get $handle))
        (return (call $respond (local.get $record) (i32.const 200)
          (i32.const 192) (i32.const 6) (i32.const 0)))))
    (if (i32.eq (local.get $event) (i32.const 3))
      (then   ;; STREAM_WRITE: the body
        (i32.store offset=24 (local.get $record) (call $written (local.get $handle)
          (i32.load offset=20 (local.get $record)) (i32.load offset=24 (local.get $record))
          (local.get $code)))
        (return (call $finish (local.get $record)))))
    (if (i32.eq (local.get $event) (i32.const 5))
      (then   ;; FUTURE_WRITE: the trailers
        (call $trailers_written (local.get $record) (local.get $handle) (local.get $code))
        (i32.store offset=28 (local.get $record) (i32.const 0))
        (return (call $finish (local.get $record)))))
    (unreachable))

  ;; Answers $status with the $len bytes at $body, and the trailers x-done: 1 if
  ;; $trailers; returns the callback code.
  (func $respond (param $record i32) (param $status i32) (param $body i32) (param $len i32)
        (param $trailers i32) (result i32)
    (local $n i32) (local $digit i32) (local $body_ends i64) (local $trailers_ends i64)
    (local $response i32) (local $tx i32) (local $set i32)
    (local.set $n (i32.load offset=32 (local.get $record)))
    (local.set $digit (i32.const 122))
    (loop $digits
      (local.set $digit (i32.sub (local.get $digit) (i32.const 1)))
      (i32.store8 (local.get $digit)
        (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (br_if $digits (local.tee $n (i32.div_u (local.get $n) (i32.const 10)))))
    (i32.store (i32.const 72) (local.get $digit))
    (i32.store (i32.const 76) (i32.sub (i32.const 122) (local.get $digit)))
    (call $fields_from_list (i32.const 64) (i32.add (i32.const 1) (local.get $trailers))
      (i32.const 32))
    (if (i32.load8_u (i32.const 32)) (then (unreachable)))
    (local.set $body_ends (call $body_new))
    (local.set $trailers_ends (call $trailers_new))
    (call $response_new (i32.load (i32.const 36))
      (i32.const 1) (i32.wrap_i64 (local.get $body_ends))
      (i32.wrap_i64 (local.get $trailers_ends)) (i32.const 0))
    (local.set $response (i32.load (i32.const 0)))
    (call $sent_drop (i32.load (i32.const 4)))
    (if (i32.ne (local.get $status) (i32.const 200))
      (then (if (call $set_status (local.get $response) (local.get $status))
        (then (unreachable)))))
    (call $task_return (i32.const 0) (local.get $response)
      (i32.const 0) (i64.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
    (local.set $set (i32.load offset=16 (local.get $record)))
    ;; The trailers: ok(none), or ok(some(x-done: 1)).
    (i32.store8 (local.get $record) (i32.const 0))
    (i32.store8 offset=8 (local.get $record) (local.get $trailers))
    (if (local.get $trailers)
      (then
        (call $fields_from_list (i32.const 96) (i32.const 1) (i32.const 32))
        (if (i32.load8_u (i32.const 32)) (then (unreachable)))
        (i32.store offset=12 (local.get $record) (i32.load (i32.const 36)))))
    (local.set $tx (i32.wrap_i64 (i64.shr_u (local.get $trailers_ends) (i64.const 32))))
    (local.set $n (call $trailers_write (local.get $tx) (local.get $record)))
    (i32.store offset=28 (local.get $record) (i32.eq (local.get $n) (i32.const -1)))
    (if (i32.eq (local.get $n) (i32.const -1))
      (then (call $join (local.get $tx) (local.get $set)))
      (else (call $trailers_written (local.get $record) (local.get $tx) (local.get $n))))
    ;; The body.
    (local.set $tx (i32.wrap_i64 (i64.shr_u (local.get $body_ends) (i64.const 32))))
    (i32.store offset=20 (local.get $record) (i32.add (local.get $body) (local.get $len)))
    (local.set $len (call $written (local.get $tx) (i32.add (local.get $body) (local.get $len))
      (local.get $len) (call $body_write (local.get $tx) (local.get $body) (local.get $len))))
    (i32.store offset=24 (local.get $record) (local.get $len))
    (if (local.get $len) (then (call $join (local.get $tx) (local.get $set))))
    (call $finish (local.get $record)))

  ;; The trailers write on $tx finished with $code: its end is dropped, and trailers the
  ;; reader did not take (it was gone) are still ours to drop.
  (func $trailers_written (param $record i32) (param $tx i32) (param $code i32)
    (call $trailers_drop (local.get $tx))
    (if (i32.and (i32.ne (i32.and (local.get $code) (i32.const 15)) (i32.const 0))
          (i32.load8_u offset=8 (local.get $record)))
      (then (call $fields_drop (i32.load offset=12 (local.get $record))))))

  ;; The body left to write, its last $left bytes ending at $end, after a write returned
  ;; $code (as hello.wat's $written).
  (func $written (param $tx i32) (param $end i32) (param $left i32) (param $code i32)
        (result i32)
    (loop $more
      (if (i32.eq (local.get $code) (i32.const -1)) (then (return (local.get $left))))
      (local.set $left (i32.sub (local.get $left) (i32.shr_u (local.get $code) (i32.const 4))))
      (if (i32.eqz (i32.or (i32.eqz (local.get $left)) (i32.and (local.get $code) (i32.const 15))))
        (then
          (local.set $code (call $body_write (local.get $tx)
            (i32.sub (local.get $end) (local.get $left)) (local.get $left)))
          (br $more))))
    (call $body_drop (local.get $tx))
    (i32.const 0))

  ;; EXIT, the record freed, once the body and the trailers are written; WAIT otherwise.
  (func $finish (param $record i32) (result i32)
    (if (i32.or (i32.load offset=24 (local.get $record)) (i32.load offset=28 (local.get $record)))
      (then (return (call $wait (local.get $record)))))
    (i32.store (local.get $record) (global.get $free))
    (global.set $free (local.get $record))
    (i32.const 0))

  ;; Keeps the record as the task's context and returns WAIT on its set.
  (func $wait (param $record i32) (result i32)
    (call $context_set (local.get $record))
    (i32.or (i32.shl (i32.load offset=16 (local.get $record)) (i32.const 4)) (i32.const 2)))

  ;; Whether the $len bytes at $path start with the $n bytes at $literal.
  (func $starts (param $path i32) (param $len i32) (param $literal i32) (param $n i32)
        (result i32)
    (if (i32.lt_u (local.get $len) (local.get $n)) (then (return (i32.const 0))))
    (loop $more
      (if (i32.eqz (local.get $n)) (then (return (i32.const 1))))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $more (i32.eq (i32.load8_u (i32.add (local.get $path) (local.get $n)))
        (i32.load8_u (i32.add (local.get $literal) (local.get $n))))))
    (i32.const 0))

  ;; The decimal number at $at, up to $end or the first other byte, capped at 16777215.
  (func $number (param $at i32) (param $end i32) (result i32)
    (local $n i32) (local $digit i32)
    (block $done
      (loop $more
        (br_if $done (i32.ge_u (local.get $at) (local.get $end)))
        (local.set $digit (i32.sub (i32.load8_u (local.get $at)) (i32.const 48)))
        (br_if $done (i32.gt_u (local.get $digit) (i32.const 9)))
        (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10)) (local.get $digit)))
        (if (i32.gt_u (local.get $n) (i32.const 0xffffff))
          (then (local.set $n (i32.const 0xffffff))))
        (local.set $at (i32.add (local.get $at) (i32.const 1)))
        (br $more)))
    (local.get $n)))
