;; command (WASI 0.3): the smallest command component a test needs, written by hand in the
;; component text format (no toolchain here emits a 0.3 command smaller than a language
;; runtime; see docs/plans/wasi-0.3.md). Its `wasi:cli/run@0.3.0` (an async func, lifted
;; synchronously) asks `wasi:cli/environment@0.3.0` for its arguments and returns `ok`
;; when it has none besides its name, `err` (exit code 1) when it has any.
;; hack/build-wasm makes it target/wasm/p3-command.component.wasm.
(component
  (import "wasi:cli/environment@0.3.0" (instance $environment
    (export "get-arguments" (func (result (list string))))))
  ;; Memory and a bump allocator for the argument list the host writes.
  (core module $libc
    (memory (export "mem") 1)
    (global $bump (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $at i32)
      (local.set $at (i32.and
        (i32.add (global.get $bump) (i32.sub (local.get 2) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get 2))))
      (global.set $bump (i32.add (local.get $at) (local.get 3)))
      (local.get $at)))
  (core instance $libc (instantiate $libc))
  (alias core export $libc "mem" (core memory $mem))
  (alias core export $libc "realloc" (core func $realloc))
  (alias export $environment "get-arguments" (func $get_arguments))
  (core func $get_arguments_lowered
    (canon lower (func $get_arguments) (memory $mem) (realloc $realloc)))
  (core module $main
    (import "libc" "mem" (memory 1))
    (import "env" "get-arguments" (func $get_arguments (param i32)))
    ;; The list's address and length land at 256 and 260.
    (func (export "run") (result i32)
      (call $get_arguments (i32.const 256))
      (i32.gt_u (i32.load (i32.const 260)) (i32.const 1))))
  (core instance $main (instantiate $main
    (with "libc" (instance $libc))
    (with "env" (instance (export "get-arguments" (func $get_arguments_lowered))))))
  (type $run_type (func async (result (result))))
  (func $run (type $run_type) (canon lift (core func $main "run")))
  (instance $cli (export "run" (func $run)))
  (export "wasi:cli/run@0.3.0" (instance $cli)))
