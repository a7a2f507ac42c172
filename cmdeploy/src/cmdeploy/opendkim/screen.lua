-- OpenDKIM screen policy: only signatures by the From: domain count (strict alignment,
-- like DMARC adkim=s, without consulting DMARC). Others are not even verified.
if odkim.get_mtasymbol(ctx, "{daemon_name}") == "ORIGINATING" then
    return nil
end
local from = odkim.get_fromdomain(ctx)
if from == nil then
    return nil
end
from = string.lower(from)
for i = 1, odkim.get_sigcount(ctx) do
    local sig = odkim.get_sighandle(ctx, i - 1)
    local domain = odkim.sig_getdomain(sig)
    if domain == nil or string.lower(domain) ~= from then
        odkim.sig_ignore(sig)
    end
end
return nil
