# milter's verdict, applied at delivery: Dovecot runs this before the user's own Sieve script
# (sieve_before in 90-milter-sieve.conf), from the X-Spam-* headers milter adds.
#
#   X-Spam-Action: spam_folder   -> the Junk folder (created if missing)
#   X-Spam-Action: flag          -> the inbox, marked \Flagged
#   X-Spam-Action: deliver       -> the inbox, untouched
#   no X-Spam-Action but X-Spam-Flag: YES (a SpamAssassin-style verdict) -> Junk
#
# milter removes X-Spam-* headers that arrive from outside before it adds its own, so these
# headers are milter's verdict, not the sender's. Edit a copy under /etc/dovecot/sieve/ and
# run `sievec` on it after every change.
require ["fileinto", "mailbox", "imap4flags"];

if header :is "X-Spam-Action" "spam_folder" {
    fileinto :create "Junk";
    stop;
} elsif header :is "X-Spam-Action" "flag" {
    addflag "\\Flagged";
} elsif allof (not exists "X-Spam-Action", header :is "X-Spam-Flag" "YES") {
    fileinto :create "Junk";
    stop;
}
