# milter: a message was moved or copied out of Junk (imapsieve_mailbox2 in
# 90-milter-imapsieve.conf): teach milter it is not spam, unless it went to Trash (deleting
# spam says nothing about it) or was copied within Junk. Add the names your clients use for
# Trash to the list.
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];

if environment :matches "imap.mailbox" "*" {
    set "mailbox" "${1}";
}

if string "${mailbox}" ["Trash", "Junk"] {
    stop;
}

if environment :matches "imap.user" "*" {
    set "username" "${1}";
}

pipe :copy "milter-learn" ["ham", "${username}"];
