// hello (wasi:http handler): answers every request with 200 and a text/plain body that
// says what it received and where it runs: the method, the path with query, the pod
// (the environment variable POD_NAME, or "unknown"), an empty line, then each request
// header as "name: value", e.g.
//   method: GET
//   path: /some/path?x=1
//   pod: web-7d4f9
//
//   host: 10.0.0.5:8080
//   user-agent: curl/8.0
// A path /sleep/SECONDS first sleeps that long (a slow request). A path /alloc/MIB first
// mallocs MIB MiB and writes every byte (as a handler filling a cache would), then
// answers as above, with "alloc: MIB MiB" after the pod line; when malloc fails it
// answers 507 "alloc: malloc failed".
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

/* The number N of a path PREFIX N (digits up to the end, '?' or '/'), else -1. */
static long path_number(const char *path, size_t len, const char *prefix) {
    size_t n = strlen(prefix);
    if (len <= n || memcmp(path, prefix, n)) return -1;
    long value = 0;
    for (size_t i = n; i < len && path[i] >= '0' && path[i] <= '9' && value < 1 << 20; i++)
        value = value * 10 + (path[i] - '0');
    return value;
}

static const char *METHODS[] = {"GET",     "HEAD",    "POST",  "PUT",  "DELETE",
                                "CONNECT", "OPTIONS", "TRACE", "PATCH"};

void exports_wasi_http_incoming_handler_handle(wasi_http_types_own_incoming_request_t request,
                                               response_out_t out) {
    wasi_http_types_borrow_incoming_request_t req = wasi_http_types_borrow_incoming_request(request);
    text_t body = {0};

    wasi_http_types_method_t method;
    wasi_http_types_method_incoming_request_method(req, &method);
    text_str(&body, "method: ");
    if (method.tag == WASI_HTTP_TYPES_METHOD_OTHER)
        text_add(&body, method.val.other.ptr, method.val.other.len);
    else
        text_str(&body, METHODS[method.tag]);
    wasi_http_types_method_free(&method);

    handler_string_t path;
    long mib = -1;
    text_str(&body, "\npath: ");
    if (wasi_http_types_method_incoming_request_path_with_query(req, &path)) {
        text_add(&body, path.ptr, path.len);
        mib = path_number((const char *)path.ptr, path.len, "/alloc/");
        long seconds = path_number((const char *)path.ptr, path.len, "/sleep/");
        if (seconds > 0) sleep((unsigned)seconds);
        handler_string_free(&path);
    }

    text_str(&body, "\npod: ");
    if (!env_get("POD_NAME", &body)) text_str(&body, "unknown");
    text_str(&body, "\n");
    if (mib >= 0) {
        size_t bytes = (size_t)mib << 20;
        char *block = malloc(bytes ? bytes : 1);
        if (!block) {
            static const char failed[] = "alloc: malloc failed\n";
            wasi_http_types_incoming_request_drop_own(request);
            respond(out, 507, failed, sizeof failed - 1);
            text_free(&body);
            return;
        }
        memset(block, 1, bytes);
        /* Read back, so the compiler cannot drop the allocation as unused. */
        unsigned sum = 0;
        for (size_t i = 0; i < bytes; i += 4096) sum += (unsigned char)block[i];
        char line[64];
        int k = snprintf(line, sizeof line, "alloc: %ld MiB (%u pages)\n", mib, sum);
        text_add(&body, line, (size_t)k);
        free(block);
    }

    wasi_http_types_own_headers_t headers = wasi_http_types_method_incoming_request_headers(req);
    wasi_http_types_list_tuple2_field_name_field_value_t entries;
    wasi_http_types_method_fields_entries(wasi_http_types_borrow_fields(headers), &entries);
    for (size_t i = 0; i < entries.len; i++) {
        text_str(&body, "\n");
        text_add(&body, entries.ptr[i].f0.ptr, entries.ptr[i].f0.len);
        text_str(&body, ": ");
        text_add(&body, entries.ptr[i].f1.ptr, entries.ptr[i].f1.len);
    }
    wasi_http_types_list_tuple2_field_name_field_value_free(&entries);
    wasi_http_types_fields_drop_own(headers);

    text_str(&body, "\n");

    wasi_http_types_incoming_request_drop_own(request);
    respond(out, 200, body.ptr, body.len);
    text_free(&body);
}
