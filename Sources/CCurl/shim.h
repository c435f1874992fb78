// libcurl for Swift: curl_easy_setopt, curl_easy_getinfo and curl_multi_setopt are variadic, which Swift
// cannot call, so each argument type gets a typed wrapper here.
#ifndef PREFECT_WORKER_CCURL_SHIM_H
#define PREFECT_WORKER_CCURL_SHIM_H

#include <curl/curl.h>

typedef size_t (*pw_curl_data_callback)(char *data, size_t size, size_t count, void *context);

static inline CURLcode pw_easy_setopt_long(CURL *handle, CURLoption option, long value) {
    return curl_easy_setopt(handle, option, value);
}
static inline CURLcode pw_easy_setopt_string(CURL *handle, CURLoption option, const char *value) {
    return curl_easy_setopt(handle, option, value);
}
static inline CURLcode pw_easy_setopt_pointer(CURL *handle, CURLoption option, void *value) {
    return curl_easy_setopt(handle, option, value);
}
static inline CURLcode pw_easy_setopt_slist(CURL *handle, CURLoption option, struct curl_slist *value) {
    return curl_easy_setopt(handle, option, value);
}
static inline CURLcode pw_easy_setopt_callback(CURL *handle, CURLoption option, pw_curl_data_callback value) {
    return curl_easy_setopt(handle, option, value);
}
static inline CURLcode pw_easy_setopt_size(CURL *handle, CURLoption option, curl_off_t value) {
    return curl_easy_setopt(handle, option, value);
}
static inline CURLcode pw_easy_getinfo_long(CURL *handle, CURLINFO info, long *value) {
    return curl_easy_getinfo(handle, info, value);
}
static inline CURLcode pw_easy_getinfo_pointer(CURL *handle, CURLINFO info, void **value) {
    return curl_easy_getinfo(handle, info, value);
}
static inline CURLcode pw_easy_getinfo_socket(CURL *handle, CURLINFO info, curl_socket_t *value) {
    return curl_easy_getinfo(handle, info, value);
}
static inline CURLMcode pw_multi_setopt_long(CURLM *handle, CURLMoption option, long value) {
    return curl_multi_setopt(handle, option, value);
}

/// The message's easy handle and result (CURLMsg.data is a union Swift cannot read).
static inline CURLcode pw_msg_result(const CURLMsg *message) { return message->data.result; }

#endif
