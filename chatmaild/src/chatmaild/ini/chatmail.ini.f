# chatmail relay configuration, read by cmdeploy and by the relay's services.
# Lines starting with '#' show the default; remove the '#' to change a value.
# Sizes accept K, M and G suffixes (1G = 1024M).

[params]

# The domain of the relay: every account is <name>@{mail_domain}.
# A domain starting with '_' (e.g. _relay1.lab) gets a self-signed certificate.
mail_domain = {mail_domain}

## Accounts are created by the first login

# Length of the part before '@' (characters a-z 0-9 . _ -).
#username_min_length = 9
#username_max_length = 9

# Minimum length of the password chosen at the first login.
#password_min_length = 9

# New accounts one client IP address (an IPv6 /64) may create per hour, and the burst
# allowed at once (a class or a conference behind one NAT). Logins of existing accounts
# are never limited by this; /new requests are limited to the same figures by nginx.
#max_new_accounts_per_ip_per_hour = 60
#max_new_accounts_per_ip_burst = 100

# Refuse new accounts (existing ones keep working) while the 1-minute load average
# is higher, or available memory or free disk space is lower, than these.
#max_load_1m = 5
#min_available_memory = 200M
#min_free_disk_space = 1G

## Limits

# Messages one account may send per minute, and the burst allowed on top.
#max_user_send_per_minute = 60
#max_user_send_burst_size = 10

# Addresses that may send without these limits: only for the accounts of
# 'cmdeploy bench', never for people (it lifts spam protection for them).
#rate_limit_exempt =

# Mailbox quota per account; the oldest messages are removed when it fills.
#max_mailbox_size = 500M

# Largest message accepted, in bytes (default 30 MiB).
#max_message_size = 31457280

# Connection caps (per server; a single client IP gets a fifth of the SMTP cap).
#max_imap_connections = 10000
#max_smtp_connections = 1000

## Deletion

# Days after which any message is removed from the server.
#delete_mails_after = 20

# Days after which messages larger than 200 kB are removed.
#delete_large_after = 7

# Days without a login after which a whole account is removed.
#delete_inactive_users_after = 90

## Push notifications

# Where device tokens are sent when new mail arrives.
#notification_url = https://notifications.delta.chat/notify

# URL of an iroh relay announced to clients (for realtime apps); unset means none.
#iroh_relay = https://iroh.example.org

## TLS and network

# Certificate and key managed by you, as two paths on the server ("CERT KEY").
# Empty: Let's Encrypt via acmetool (self-signed for domains starting with '_').
#tls_external_cert_and_key =

# Contact address for the Let's Encrypt account.
#acme_email =

# ACME server that issues the certificate (default: Let's Encrypt production).
#acme_directory_url = https://acme-v02.api.letsencrypt.org/directory

# PEM file on the deploying machine (relative paths: from this file's directory) with CA
# certificates the relay trusts in addition to the system ones: the CA of a private ACME
# server and the roots it issues from. Empty: only the system CAs.
#acme_ca_file =

# Listen on IPv4 only.
#disable_ipv6 = false

# Mail to other relays tries HTTPS (POST https://<MX host>/mxdeliv) before SMTP on port 25,
# for providers that block port 25; false leaves it to Postfix's own SMTP client.
#mxdeliv_outgoing = true

# Address for mtail's Prometheus endpoint (port 3903); unset means mtail is off.
#mtail_address = 127.0.0.1

## Debugging

# Write raw IMAP traffic into each account's directory (never on a production relay).
#imap_rawlog = false

# Allow IMAP COMPRESS (turns off hibernation of idle connections).
#imap_compress = false

# Which Dovecot to run: "patched" is Debian's own dovecot source rebuilt on the relay
# (once, ~15 min; the .debs are cached on the deploying machine) without the 500 ms
# delay before IDLE clients hear of new mail; "stock" is Debian's package as it is.
#dovecot_package = patched

# Only when the newest Debian dovecot source cannot be downloaded: build the patched
# Dovecot from an older source anyway, below the security level of Debian's binaries.
# Off by default: then the relay keeps (or gets) the stock package and the deploy says so.
#dovecot_allow_outdated_source = false

## Web page

# Folder with your own web page sources; empty uses the bundled www/ folder.
#www_folder =

## Privacy policy contacts (shown on the privacy page; required for public relays)

privacy_mail =
privacy_postal =
privacy_pdo =
privacy_supervisor =

## Internal ports and paths (rarely changed)

#filtermail_smtp_port = 10080
#filtermail_smtp_port_incoming = 10081
#filtermail_http_port_incoming = 10082
#mxdeliv_transport_port = 10083
#postfix_reinject_port = 10025
#postfix_reinject_port_incoming = 10026
#postfix_reinject_port_local = 10027
#mailboxes_dir = /home/vmail/mail/{mail_domain}
#nocreate_file = /etc/chatmail-nocreate

# Private DNS zones the relay's resolver asks a given server for, without DNSSEC,
# as ZONE@IP items (used by the local lab: lab@10.77.0.1).
#dns_forward_zones =
