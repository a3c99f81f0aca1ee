// ready (wasi:http handler): a readiness probe target. /healthz answers 200 "ok"
// when the file "ready" exists in the directory preopened as /data, else 503 "not
// ready"; every other request answers 200 "ready-app".
#include <string.h>

#include "common.h"

// Whether /data/ready exists, by a stat in the preopened /data (wasi:filesystem).
static int data_ready(void) {
    wasi_filesystem_preopens_list_tuple2_own_descriptor_string_t dirs;
    wasi_filesystem_preopens_get_directories(&dirs);
    int ready = 0;
    for (size_t i = 0; i < dirs.len; i++) {
        handler_string_t *path = &dirs.ptr[i].f1;
        wasi_filesystem_types_own_descriptor_t dir = dirs.ptr[i].f0;
        if (path->len == 5 && memcmp(path->ptr, "/data", 5) == 0) {
            handler_string_t name;
            handler_string_set(&name, "ready");
            wasi_filesystem_types_descriptor_stat_t stat;
            wasi_filesystem_types_error_code_t err;
            ready = wasi_filesystem_types_method_descriptor_stat_at(
                wasi_filesystem_types_borrow_descriptor(dir),
                WASI_FILESYSTEM_TYPES_PATH_FLAGS_SYMLINK_FOLLOW, &name, &stat, &err);
        }
        wasi_filesystem_types_descriptor_drop_own(dir);
    }
    wasi_filesystem_preopens_list_tuple2_own_descriptor_string_free(&dirs);
    return ready;
}

void exports_wasi_http_incoming_handler_handle(wasi_http_types_own_incoming_request_t request,
                                               response_out_t out) {
    wasi_http_types_borrow_incoming_request_t req = wasi_http_types_borrow_incoming_request(request);
    handler_string_t path = {0};
    int healthz = wasi_http_types_method_incoming_request_path_with_query(req, &path) &&
                  path.len >= 8 && memcmp(path.ptr, "/healthz", 8) == 0 &&
                  (path.len == 8 || path.ptr[8] == '?');
    handler_string_free(&path);
    wasi_http_types_incoming_request_drop_own(request);

    if (!healthz)
        respond(out, 200, "ready-app", 9);
    else if (data_ready())
        respond(out, 200, "ok", 2);
    else
        respond(out, 503, "not ready", 9);
}
