-- OpenDKIM final policy: mail that is not ours to sign must carry a valid signature of
-- its From: domain, else it is refused. OpenDKIM dies on any Lua error and also runs this
-- script with stub values at start-up, so every value is type-checked, the verdict is
-- computed under pcall, and an error refuses the mail temporarily (never accepts it).
local function verdict()
    if odkim.get_mtasymbol(ctx, "{daemon_name}") == "ORIGINATING" then
        return "sign"
    end
    local from = odkim.get_fromdomain(ctx)
    local count = odkim.get_sigcount(ctx)
    if type(from) ~= "string" or type(count) ~= "number" then
        return "reject"
    end
    from = string.lower(from)
    for i = 1, count do
        local sig = odkim.get_sighandle(ctx, i - 1)
        local domain = odkim.sig_getdomain(sig)
        if type(domain) == "string" and string.lower(domain) == from
                and odkim.sig_result(sig) == 0 then
            return "accept"
        end
    end
    return "reject"
end

local ok, result = pcall(verdict)
if ok and (result == "sign" or result == "accept") then
    return nil
end
if ok then
    odkim.set_reply(ctx, "554", "5.7.1", "No valid DKIM signature found")
    odkim.set_result(ctx, SMFIS_REJECT)
else
    odkim.set_reply(ctx, "451", "4.7.1", "DKIM check failed, try again later")
    odkim.set_result(ctx, SMFIS_TEMPFAIL)
end
return nil
