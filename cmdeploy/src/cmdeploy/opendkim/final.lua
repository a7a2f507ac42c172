-- OpenDKIM final policy: mail that is not ours to sign must carry a valid signature of
-- its From: domain, else it is refused with the reply below.
if odkim.get_mtasymbol(ctx, "{daemon_name}") == "ORIGINATING" then
    return nil
end
local from = odkim.get_fromdomain(ctx)
if from ~= nil then
    from = string.lower(from)
    for i = 1, odkim.get_sigcount(ctx) do
        local sig = odkim.get_sighandle(ctx, i - 1)
        local domain = odkim.sig_getdomain(sig)
        if domain ~= nil and string.lower(domain) == from and odkim.sig_result(sig) == 0 then
            return nil
        end
    end
end
odkim.set_reply(ctx, "554", "5.7.1", "No valid DKIM signature found")
odkim.set_result(ctx, SMFIS_REJECT)
return nil
