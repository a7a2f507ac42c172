-- OpenDKIM screen policy: only signatures by the From: domain count (strict alignment,
-- like DMARC adkim=s, without consulting DMARC); the others are not even verified.
-- OpenDKIM dies on any Lua error and also runs this script with stub values at start-up,
-- so every value is type-checked and the work runs under pcall.
local function screen()
    if odkim.get_mtasymbol(ctx, "{daemon_name}") == "ORIGINATING" then
        return
    end
    local from = odkim.get_fromdomain(ctx)
    if type(from) ~= "string" then
        return
    end
    from = string.lower(from)
    local count = odkim.get_sigcount(ctx)
    if type(count) ~= "number" then
        return
    end
    for i = 1, count do
        local sig = odkim.get_sighandle(ctx, i - 1)
        local domain = odkim.sig_getdomain(sig)
        if type(domain) == "string" and string.lower(domain) ~= from then
            odkim.sig_ignore(sig)
        end
    end
end

pcall(screen)
return nil
