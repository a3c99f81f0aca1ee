;; The smallest WASI 0.3 command: `wasi:cli/run@0.3.0#run` lifted async with a
;; callback; it returns `err` (exit status 1) at once through task.return.
(module
  (import "[export]wasi:cli/run@0.3.0" "[task-return]run" (func $task_return (param i32)))
  (memory (export "memory") 1)
  (func (export "[async-lift]wasi:cli/run@0.3.0#run") (result i32)
    (call $task_return (i32.const 1))   ;; result::err
    (i32.const 0))                      ;; callback code EXIT
  (func (export "[callback][async-lift]wasi:cli/run@0.3.0#run")
        (param i32 i32 i32) (result i32)
    (i32.const 0)))
