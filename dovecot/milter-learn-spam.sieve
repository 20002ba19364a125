# milter: a message was moved or copied into Junk (imapsieve_mailbox1 in
# 90-milter-imapsieve.conf): teach milter it is spam. The copy in Junk is kept as it is (:copy);
# milter-learn takes the message on standard input and the user who moved it.
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];

if environment :matches "imap.user" "*" {
    set "username" "${1}";
}

pipe :copy "milter-learn" ["spam", "${username}"];
