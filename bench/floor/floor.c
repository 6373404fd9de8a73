/*
 * floor: the cheapest read a Redis module can serve through the public module
 * API, as a yardstick for NSCACHE.GET in `make bench-redis` (issue 8). Never
 * loaded in production, never built by `make build`.
 *
 * FLOOR.GET key         opens `key`, replies its string value (or nil):
 *                       what any module command that reads a key pays over
 *                       plain GET (the module context, the key handle).
 * FLOOR.NSGET ns key    the same for the name `ns:{key}`, built per call:
 *                       adds what any namespaced read pays (a third
 *                       argument, a key name string object).
 *
 * No statistics, no ACL check, no type of its own: nscache does all three on
 * top, so its ratio to plain GET cannot be better than FLOOR.NSGET's.
 */
#include <string.h>

#include "redismodule.h"

static int reply_string_key(RedisModuleCtx *ctx, RedisModuleString *name) {
    RedisModuleKey *key = RedisModule_OpenKey(ctx, name, REDISMODULE_READ);
    if (key == NULL || RedisModule_KeyType(key) != REDISMODULE_KEYTYPE_STRING) {
        if (key != NULL) RedisModule_CloseKey(key);
        return RedisModule_ReplyWithNull(ctx);
    }
    size_t len = 0;
    char *value = RedisModule_StringDMA(key, &len, REDISMODULE_READ);
    RedisModule_ReplyWithStringBuffer(ctx, value, len);
    RedisModule_CloseKey(key);
    return REDISMODULE_OK;
}

static int floor_get(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc != 2) return RedisModule_WrongArity(ctx);
    return reply_string_key(ctx, argv[1]);
}

static int floor_nsget(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc != 3) return RedisModule_WrongArity(ctx);
    size_t ns_len = 0, key_len = 0;
    const char *ns = RedisModule_StringPtrLen(argv[1], &ns_len);
    const char *k = RedisModule_StringPtrLen(argv[2], &key_len);
    char buf[256];
    if (ns_len + key_len + 3 > sizeof(buf)) return RedisModule_ReplyWithError(ctx, "ERR too long");
    memcpy(buf, ns, ns_len);
    buf[ns_len] = ':';
    buf[ns_len + 1] = '{';
    memcpy(buf + ns_len + 2, k, key_len);
    buf[ns_len + 2 + key_len] = '}';
    RedisModuleString *name = RedisModule_CreateString(ctx, buf, ns_len + key_len + 3);
    int status = reply_string_key(ctx, name);
    RedisModule_FreeString(ctx, name);
    return status;
}

int RedisModule_OnLoad(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    (void)argv;
    (void)argc;
    if (RedisModule_Init(ctx, "floor", 1, REDISMODULE_APIVER_1) == REDISMODULE_ERR)
        return REDISMODULE_ERR;
    if (RedisModule_CreateCommand(ctx, "floor.get", floor_get, "readonly fast", 1, 1, 1) ==
        REDISMODULE_ERR)
        return REDISMODULE_ERR;
    if (RedisModule_CreateCommand(ctx, "floor.nsget", floor_nsget, "readonly fast", 2, 2, 1) ==
        REDISMODULE_ERR)
        return REDISMODULE_ERR;
    return REDISMODULE_OK;
}
